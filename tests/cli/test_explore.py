"""`saescope explore`: it prints the URL, serves the runs there on 127.0.0.1 until Ctrl-C, and a
folder without an SAE or a port in use is a one-line error. With no RUN it serves the seed demos
and their indexed classifier run; with --no-demo too, it says what to give."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from saescope.cli import build_parser, explore
from saescope.experiments import seed_demos
from tests.cli.common import one_line_error
from tests.explore.common import random_run

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_defaults_bind_this_machine_only():
    ns = build_parser().parse_args(["explore", "a", "b"])
    assert (ns.runs, ns.host, ns.port) == (["a", "b"], "127.0.0.1", 8000)
    assert build_parser().parse_args(["explore"]).runs == []


def serve(argv, env):
    """Start `saescope explore ARGV --port 0`; its process and the URL it printed."""
    cmd = [sys.executable, "-m", "saescope", "explore", *argv, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, proc.stdout.readline()


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


@pytest.mark.slow
def test_it_prints_the_url_serves_the_runs_and_stops_on_ctrl_c(tmp_path):
    run = random_run(tmp_path / "glass")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc, line = serve([str(run), "--no-demo"], env)
    try:
        assert line.startswith("saescope explore: glass at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        assert [x["name"] for x in get(f"{url}api/runs")] == ["glass"]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert "Feature browser" in r.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err and "error" not in err


def test_a_folder_without_an_sae_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["explore", str(tmp_path), "--no-demo"])
    assert "holds no saved SAE" in err


def test_a_port_in_use_is_one_line(capsys, tmp_path):
    run = random_run(tmp_path / "glass")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = one_line_error(capsys, ["explore", str(run), "--port", str(port), "--no-demo"])
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    err = one_line_error(capsys, ["explore", str(run), "--port", "70000", "--no-demo"])
    assert "not a port" in err


def test_the_demo_is_built_when_missing_and_its_indexed_run_served(tmp_path, monkeypatch):
    built = []

    def ensure(path):
        built.append(path)
        return tmp_path / "demo" / "seed_demos.json"

    monkeypatch.setattr(seed_demos, "ensure", ensure)
    run = str(random_run(tmp_path / "glass"))
    ns = build_parser().parse_args(["explore", run])
    assert explore._demo(ns) == (tmp_path / "demo" / "seed_demos.json", [run])
    assert built == [None]  # the default file, built when missing
    classifier = random_run(tmp_path / "demo" / seed_demos.CLASSIFIER_RUN)
    assert explore._demo(ns)[1] == [run, str(classifier)]
    ns = build_parser().parse_args(["explore", run, str(classifier), "--demo", "x.json"])
    assert explore._demo(ns)[1] == [run, str(classifier)] and built[-1] == "x.json"
    ns = build_parser().parse_args(["explore", run, "--no-demo"])
    assert explore._demo(ns) == (None, [run]) and len(built) == 3


def test_no_run_serves_the_demos_run_and_no_run_without_the_demo_says_what_to_give(
    capsys, tmp_path, monkeypatch
):
    demo = tmp_path / "demo" / "seed_demos.json"
    monkeypatch.setattr(seed_demos, "ensure", lambda path: demo)
    ns = build_parser().parse_args(["explore"])
    err = one_line_error(capsys, ["explore", "--port", "0"])
    assert "no indexed classifier run" in err and "delete" in err and "give a RUN" in err
    classifier = random_run(tmp_path / "demo" / seed_demos.CLASSIFIER_RUN)
    assert explore._demo(ns) == (demo, [str(classifier)])
    err = one_line_error(capsys, ["explore", "--no-demo"])
    assert "--no-demo with no RUN" in err and "give a RUN folder" in err


@pytest.mark.slow
def test_explore_alone_serves_the_seed_demos_and_their_classifier_run(tmp_path):
    demo = seed_demos.build(
        tmp_path / "demo" / "seed_demos.json", cfg=seed_demos.quick_config(), progress=False
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc, line = serve(["--demo", str(demo)], env)
    try:
        assert line.startswith(f"saescope explore: {seed_demos.CLASSIFIER_RUN} at http://"), line
        url = line.split(" at ")[1].split()[0]
        runs = get(f"{url}api/runs")
        assert [r["name"] for r in runs] == [seed_demos.CLASSIFIER_RUN]
        assert runs[0]["saes"][0]["index"]["kind"] == "classes"
        data = get(f"{url}api/seed/sparsity")
        assert data["index_run"] == seed_demos.CLASSIFIER_RUN and data["acts"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "Traceback" not in err and "error" not in err
