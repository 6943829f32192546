"""Every benchmark result says which CPU it ran on: the engine that wins differs by several times between them."""

from __future__ import annotations

from loadtests.host import describe_host, host_line


def test_cpu_model_and_the_flags_that_matter_are_read(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_int8 amx_tile\n"
    )
    host = describe_host(cpuinfo)
    assert host["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert host["flags"] == ["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"]
    assert host["onnxruntime"] and host["torch"] and host["bentoml"]
    line = host_line(host)
    assert line.startswith("Host: Intel(R) Xeon(R) Platinum 8480+,") and "amx_int8" in line


def test_a_cpu_without_those_flags_says_so(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu sse sse2\n")
    assert describe_host(cpuinfo)["flags"] == [] and "none of avx2" in host_line(describe_host(cpuinfo))
