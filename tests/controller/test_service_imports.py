"""The service path stays lean (issue 14): what it does not use, it does not import.

Steady RSS is mostly libraries; cryptography alone is ~10 MiB. It is loaded where a
key is used (signed commands or prescriptions configured), never by a controller that
has neither. Reports and plotting never belong on the service path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from controller.benchconfig import write_bench_config


def test_an_unsigned_service_loads_no_cryptography_reports_or_rich(tmp_path: Path) -> None:
    config_path, _config = write_bench_config(tmp_path, port=str(tmp_path / "tty"))
    code = (
        "import sys\n"
        "import controller.cli.serve, controller.service._service\n"
        "import controller.service._telemetry, controller.service._audit\n"
        "from pathlib import Path\nfrom controller.config import load_config\n"
        f"load_config(Path({str(config_path)!r}))\n"
        "heavy = [m for m in ('cryptography', 'rich', 'matplotlib', 'controller.reports',"
        " 'pydantic_settings') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
