import sys

import pytest

from conftest import run_python
from gpt2bench.core.errors import BenchError
from gpt2bench.machine.probe import BandwidthProbe


def test_probe_measures_in_a_helper_process_and_keeps_torch_out_of_the_caller():
    code = (
        "import os, sys\n"
        "from gpt2bench.machine.probe import BandwidthProbe\n"
        "with BandwidthProbe(1, size_mb=16, repeats=1) as probe:\n"
        "    values = [probe(), probe()]\n"
        "    pid = probe.proc.pid\n"
        "assert all(v > 0 for v in values), values\n"
        "assert probe.proc.poll() is not None  # the helper has exited\n"
        "assert 'torch' not in sys.modules, 'the probe imported torch into the measured process'\n"
        "assert pid != os.getpid()\n"
    )
    run_python(code)


def test_a_failing_helper_is_a_clear_error():
    probe = BandwidthProbe(1)
    probe.args = [sys.executable, "-c", "import sys; sys.exit('no torch here')"]
    with pytest.raises(BenchError, match="bandwidth probe's helper process failed: no torch here"), probe:
        pass
