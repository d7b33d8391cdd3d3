"""Upload and download through huggingface_hub's real HTTP code, against a loopback stand-in for the Hub
(tests/hub/mock_hub.py on 127.0.0.1 behind HF_ENDPOINT), then offline from the cache that download filled.

huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE when it is imported, and this pytest process
already imported it offline, so each phase runs in a fresh Python process with its own environment: one online
(push, refused push, download, faults), one offline (HF_HUB_OFFLINE=1, same cache).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import safetensors.torch
import torch
from hub_testlib import TINY_IDS
from mock_hub import MockHub

CLIENT = r"""
import json, sys, time
t0 = time.time()
import safetensors.torch, torch, timm
import vizoo.hub.cli as hub_cli
from vizoo.hub import create_model, pull

job = json.loads(sys.argv[1])
inputs = safetensors.torch.load_file(job["input"])
results, outputs, timings = {}, {}, {"imports": round(time.time() - t0, 2)}

def record(key, fn):
    t = time.time()
    try:
        fn()
        results[key] = "ok"
    except SystemExit as err:
        results[key] = f"exit {err.code}"
    except Exception as err:
        results[key] = f"{type(err).__name__}: {err}"
    timings[key] = round(time.time() - t, 2)

for name, folder in job["push"].items():
    record(f"push {name}", lambda: hub_cli.main(["push", folder, f"vizoo-test/{name}"]))
for name in job["load"]:
    def load(name=name):
        with torch.no_grad():
            outputs[name] = timm.create_model(f"hf-hub:vizoo-test/{name}", pretrained=True).eval()(inputs[name])
    record(f"load {name}", load)
for key, argv in job.get("cli", {}).items():
    record(key, lambda argv=argv: hub_cli.main(argv))
for repo in job.get("pull_fails", []):
    record(f"pull {repo}", lambda repo=repo: pull(repo))
    record(f"create {repo}", lambda repo=repo: create_model(f"hf-hub:{repo}"))
safetensors.torch.save_file(outputs, job["outputs"])
json.dump(results, open(job["results"], "w"))
print(json.dumps(timings))
"""


def _run(job: dict, env: dict, tmp_path, tag: str) -> tuple[dict, dict]:
    job = dict(job, outputs=str(tmp_path / f"{tag}_out.safetensors"), results=str(tmp_path / f"{tag}.json"))
    proc = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(job)], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(tag, "seconds per step:", proc.stdout.strip().splitlines()[-1])
    return json.loads((tmp_path / f"{tag}.json").read_text()), safetensors.torch.load_file(job["outputs"])


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_TOKEN="hf_loopback_test_token", **extra)
    return env


def test_push_download_offline(exports, tmp_path):
    safetensors.torch.save_file({name: exports[name][2] for name in TINY_IDS}, str(tmp_path / "x.safetensors"))
    bad = tmp_path / "unregistered"
    shutil.copytree(exports["test_vit"][1], bad)
    config = json.loads((bad / "config.json").read_text())
    config["architecture"] = "not_a_model"
    (bad / "config.json").write_text(json.dumps(config))

    with MockHub(tmp_path / "server") as hub:
        # faults served by the stand-in: a transfer cut short, and a file that is itself truncated
        src = exports["test_vit"][1]
        for repo in ("short", "corrupt"):
            shutil.copytree(src, hub.root / "vizoo-test" / repo)
        hub.short_body.add(("vizoo-test/short", "model.safetensors"))
        raw = (src / "model.safetensors").read_bytes()
        (hub.root / "vizoo-test" / "corrupt" / "model.safetensors").write_bytes(raw[: len(raw) // 3])

        push = {name: str(exports[name][1]) for name in TINY_IDS}
        push["refused"] = str(bad)
        job = {
            "input": str(tmp_path / "x.safetensors"), "push": push, "load": TINY_IDS,
            "cli": {"pull to folder": ["pull", "vizoo-test/nat_mini", str(tmp_path / "pulled")]},
            "pull_fails": ["vizoo-test/short", "vizoo-test/corrupt"],
        }
        results, outputs = _run(job, _env(tmp_path, HF_ENDPOINT=hub.url), tmp_path, "online")
        log = list(hub.log)

    for name in TINY_IDS:
        assert results[f"push {name}"] == "ok", results
        assert results[f"load {name}"] == "ok", results
        torch.testing.assert_close(outputs[name], exports[name][3], rtol=0, atol=0)
        assert (tmp_path / "server" / "vizoo-test" / name / "README.md").read_text().count(f"vizoo-test/{name}") >= 2
    assert f"GET /vizoo-test/{TINY_IDS[0]}/resolve/main/model.safetensors" in log  # the real download path ran
    # the refused folder never reached the server
    assert results["push refused"] == "exit 2" and not any("refused" in line for line in log)
    assert results["pull to folder"] == "ok"
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # faults: clear errors, and the cache holds neither a partial nor a corrupted weights file
    assert results["pull vizoo-test/short"].startswith("FileNotFoundError") and "nothing partial" in results[
        "pull vizoo-test/short"]
    assert "truncated or corrupted" in results["pull vizoo-test/corrupt"]
    assert "truncated or corrupted" in results["create vizoo-test/corrupt"]
    for repo in ("short", "corrupt"):
        entry = tmp_path / "cache" / f"models--vizoo-test--{repo}"
        assert not list(entry.glob("snapshots/*/model.safetensors")), repo
        assert not list(entry.glob("blobs/*.incomplete")), repo

    # offline, from the cache the download filled
    job = {"input": str(tmp_path / "x.safetensors"), "push": {}, "load": TINY_IDS,
           "cli": {"pull offline": ["pull", "vizoo-test/nat_mini"], "pull missing": ["pull", "vizoo-test/absent"]},
           "pull_fails": ["vizoo-test/absent"]}
    results, outputs = _run(job, _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path, "offline")
    for name in TINY_IDS:
        assert results[f"load {name}"] == "ok", results
        torch.testing.assert_close(outputs[name], exports[name][3], rtol=0, atol=0)
    assert results["pull offline"] == "ok" and results["pull missing"] == "exit 2"
    assert "cannot be downloaded now (HF_HUB_OFFLINE=1" in results["pull vizoo-test/absent"]
    assert "HF_HUB_OFFLINE=1 forbids downloading" in results["create vizoo-test/absent"]
