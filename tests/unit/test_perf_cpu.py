"""clients/perf_cpu.py: CPU seconds of a server's python-backend stubs, found by the model they serve."""

import os
import subprocess
import sys
import time

from clients.perf_cpu import STUB_BINARY, process_cpu, stub_model

_BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\ntime.sleep(30)\n"


def test_process_cpu_counts_the_stubs_of_the_model_only(tmp_path):
    stub = tmp_path / STUB_BINARY
    stub.symlink_to(sys.executable)
    script = tmp_path / "repo" / "t1_legal_risk" / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text(_BURN)
    # argv as Triton launches a stub: the binary, then <repository>/<model>/<version>/model.py
    proc = subprocess.Popen([str(stub), str(script)], executable=sys.executable)
    try:
        deadline = time.monotonic() + 20
        while process_cpu(os.getpid(), "t1_legal_risk")["model stubs"] < 0.25 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stub_model(proc.pid) == "t1_legal_risk"
        assert stub_model(os.getpid()) is None  # not a stub
        cpu = process_cpu(os.getpid(), "t1_legal_risk")
        assert 0.25 <= cpu["model stubs"] < 5 and cpu["tritonserver"] > 0  # here: this test process as the server
        assert process_cpu(os.getpid(), "routenlp")["model stubs"] == 0.0
    finally:
        proc.kill()
        proc.wait()
