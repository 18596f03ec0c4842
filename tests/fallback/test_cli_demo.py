"""`edgewise ask` / `edgewise infer` through the router, and the demo's fallback step, on real servers."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.cli import main
from tests.fallback import _servers

pytestmark = pytest.mark.slow


def test_ask_short_on_device_long_in_the_cloud(llama_server, smollm2, capsys):
    from edgewise.demo.fallback import STORY

    long_prompt = f"Background: {' '.join([STORY] * 14)}\n\nWhat is the capital of France?"
    code = main(["ask", "What is the capital of France?", long_prompt, "--model", str(smollm2), "--n-ctx", "512",
                 "--endpoint", llama_server, "--system", "You are a helpful assistant.", "--max-tokens", "24"])
    out = capsys.readouterr().out
    assert code == 0
    device_line, cloud_line = [line for line in out.splitlines() if line.startswith("  -> ")]
    assert device_line.startswith("  -> served by device") and "fits_device" in device_line
    assert cloud_line.startswith(f"  -> served by cloud (openai:{llama_server})") and "context_overflow" in cloud_line
    assert out.count("Paris") >= 2


def test_ask_only_on_device_refuses_with_exit_2(smollm2, capsys):
    from edgewise.demo.fallback import STORY

    code = main(["ask", " ".join([STORY] * 20), "--model", str(smollm2), "--mode", "only_on_device"])
    err = capsys.readouterr().err
    assert code == 2
    assert "refused on device: only_on_device:" in err and "hint:" in err and "Traceback" not in err


def test_ask_stream_from_the_cloud_when_no_model_is_installed(llama_server, capsys):
    code = main(["ask", "What is the capital of France?", "--endpoint", llama_server, "--stream",
                 "--system", "You are a helpful assistant.", "--max-tokens", "16"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("[cloud: model_not_installed] ") and "Paris" in out


def test_infer_small_on_device_large_in_the_cloud(mlserver, digits_weights, tmp_path, capsys):
    for n, where in ((4, "device"), (64, "cloud")):
        np.save(tmp_path / "x.npy", digits_weights["x"][:n])
        code = main(["infer", "--input", str(tmp_path / "x.npy"), "--model", str(digits_weights["bundle"]),
                     "--endpoint", mlserver, "--endpoint-model", "digits", "--output", str(tmp_path / "y.npz")])
        out = capsys.readouterr().out
        assert code == 0 and f"-> served by {where}" in out
        assert np.load(tmp_path / "y.npz")["logits"].shape == (n, 10)


def test_infer_cloud_unreachable_is_a_clear_error(digits_weights, tmp_path, capsys):
    np.save(tmp_path / "x.npy", digits_weights["x"][:64])
    dead = f"http://127.0.0.1:{_servers.free_port()}"
    code = main(["infer", "--input", str(tmp_path / "x.npy"), "--model", str(digits_weights["bundle"]),
                 "--endpoint", dead, "--endpoint-model", "digits", "--deadline", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot connect after 3 attempt(s)" in err and "hint:" in err


def test_demo_fallback_step(tmp_path, capsys):
    from edgewise.demo.fallback import run_fallback_demo

    assert run_fallback_demo(tmp_path)
    out = capsys.readouterr().out
    assert "short prompt" in out and "long prompt" in out
    lines = out.splitlines()
    short = lines[next(i for i, line in enumerate(lines) if "short prompt (" in line) + 1]
    long = lines[next(i for i, line in enumerate(lines) if "long prompt (" in line) + 1]
    assert "served by device" in short and "served by cloud" in long and "context_overflow" in long
    assert out.count("Paris") >= 2
    assert "mode only_on_device: refused" in out
