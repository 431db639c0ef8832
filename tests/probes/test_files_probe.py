"""The files probe on its own: formats, discovery, bad input, the parse cache."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probes.context import ProbeContext
from probes.files import FilesProbe, FilesSettings, Pkcs12Password
from probes.reasons import Reason
from probes.result import ProbeResult
from tests.fixtures.badinputs import BAD_FILES, make_bad_files
from tests.fixtures.pki import Pki, write_formats


def run(probe: FilesProbe, target: str | Path) -> ProbeResult:
    return probe.run(str(target), ProbeContext(deadline=time.monotonic() + 10))


def probe_for(*paths: str | Path, **settings: object) -> FilesProbe:
    return FilesProbe(FilesSettings(paths=tuple(str(p) for p in paths), **settings))  # type: ignore[arg-type]


def fingerprints(result: ProbeResult) -> list[str]:
    return [o.cert.fingerprint_sha256 for o in result.certificates]


@pytest.fixture
def formats(tmp_path: Path, pki: Pki) -> dict[str, Path]:
    return write_formats(pki, tmp_path / "formats")


def test_every_format_yields_its_certificates(formats: dict[str, Path], pki: Pki, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    probe = probe_for(tmp_path, pkcs12=Pkcs12Password(password_file=str(password)))
    expected = {
        "valid.pem": [pki.valid],
        "expired.pem": [pki.expired],
        "chain.pem": [pki.valid, pki.intermediate, pki.root],  # text around blocks
        "valid.der": [pki.valid],
        "chain.p7b": [pki.valid, pki.intermediate],
        "chain.p7c.pem": [pki.expired, pki.intermediate],
        "bundle.p12": [pki.valid, pki.intermediate],
    }
    for name, certs in expected.items():
        result = run(probe, formats[name])
        assert result.success, (name, result)
        if ".p7" in name:  # PKCS#7 holds a SET OF certificates: DER sorts them
            assert sorted(fingerprints(result)) == sorted(c.fingerprint for c in certs), name
        else:
            assert fingerprints(result) == [c.fingerprint for c in certs], name
    chain = run(probe, formats["chain.pem"])
    assert [o.role for o in chain.certificates] == ["leaf", "intermediate", "root"]
    assert [o.index for o in chain.certificates] == [0, 1, 2]
    facts = chain.certificates[0].cert
    assert facts.not_after == pki.valid.not_after
    assert facts.subject_cn == "valid.test"
    assert facts.issuer_cn == "certscope test intermediate"
    assert facts.sans == ("valid.test", "www.valid.test")
    assert (facts.key_type, facts.key_bits) == ("ec", 256)
    assert facts.signature_algorithm == "ecdsa-with-SHA256"
    assert facts.serial == format(pki.valid.cert.serial_number, "x")


def test_pkcs12_password_from_environment(formats: dict[str, Path], pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_P12_PASSWORD", "correct horse")
    probe = probe_for(formats["bundle.p12"], pkcs12=Pkcs12Password(password_env="TEST_P12_PASSWORD"))
    assert fingerprints(run(probe, formats["bundle.p12"]))[0] == pki.valid.fingerprint
    monkeypatch.setenv("TEST_P12_PASSWORD", "wrong")
    probe = probe_for(formats["bundle.p12"], pkcs12=Pkcs12Password(password_env="TEST_P12_PASSWORD"))
    result = run(probe, formats["bundle.p12"])
    assert result.reason is Reason.BAD_PASSWORD
    assert "wrong" not in result.message.replace("wrong password", "")  # the password never shows


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_has_its_reason_and_names_the_file(name: str, tmp_path: Path, pki: Pki) -> None:
    paths = make_bad_files(tmp_path / "bad", pki)
    probe = probe_for(tmp_path / "bad")
    started = time.monotonic()
    result = run(probe, paths[name])
    assert time.monotonic() - started < 5, "must not block (FIFO) or read a huge file"
    expected = BAD_FILES[name][1]
    assert expected in {e.reason.value for e in result.errors}, result
    assert any(str(paths[name]) in e.message for e in result.errors), result.errors
    if expected == "duplicate_certificate":
        assert result.success and len(result.certificates) == 2  # counted, not fatal, no duplicate
    elif expected == "malformed_certificate":
        assert not result.success
        assert result.certificates[0].cert.not_after > time.time()  # expiry still known
    else:
        assert result.reason.value == expected


def test_unreadable_file_is_permission_denied(tmp_path: Path, pki: Pki) -> None:
    """Root reads everything, so the probe runs in a forked child as nobody."""
    directory = tmp_path / "perm"
    directory.mkdir()
    locked = directory / "locked.pem"
    locked.write_bytes(pki.valid.pem)
    locked.chmod(0o000)
    readable = directory / "readable.pem"
    readable.write_bytes(pki.valid.pem)
    for parent in [directory, *directory.parents]:
        parent.chmod(parent.stat().st_mode | 0o005)  # let nobody traverse

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            probe = probe_for(directory)
            outcome = {str(p): run(probe, p) for p in (locked, readable)}
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pickle.loads(pipe.read())
    os.waitpid(child, 0)
    assert outcome[str(locked)].reason is Reason.PERMISSION_DENIED
    assert str(locked) in outcome[str(locked)].message
    assert outcome[str(readable)].success


def test_discovery_globs_directories_excludes_and_volume_bookkeeping(tmp_path: Path, pki: Pki) -> None:
    root = tmp_path / "tree"
    for relative in ["a.pem", "sub/b.crt", "sub/deeper/c.pem", "expired/old.pem", "sub/notes.txt"]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pki.valid.pem)
    # A Kubernetes Secret volume: files are links into a timestamped directory.
    data = root / "secret" / "..2026_01_01_00_00_00.1"
    data.mkdir(parents=True)
    (data / "tls.crt").write_bytes(pki.valid.pem)
    os.symlink(data.name, root / "secret" / "..data")
    os.symlink("..data/tls.crt", root / "secret" / "tls.crt")
    os.symlink(str(root), root / "sub" / "loop-back-to-root")  # a directory symlink loop

    def found(*patterns: str, exclude: tuple[str, ...] = ()) -> set[str]:
        discovery = probe_for(*patterns, exclude=exclude).targets()
        return {os.path.relpath(t, root) for t in discovery.targets}

    assert found(f"{root}/**/*.pem") == {"a.pem", "sub/deeper/c.pem", "expired/old.pem"}
    assert found(f"{root}/*.pem") == {"a.pem"}
    # A directory symlink is followed (follow_symlinks), but never back into a
    # directory the same walk has already visited.
    assert found(f"{root}/sub/*/*.pem") == {"sub/deeper/c.pem", "sub/loop-back-to-root/a.pem"}
    assert found(f"{root}/**/*.pem", exclude=("**/expired/**",)) == {"a.pem", "sub/deeper/c.pem"}
    everything = found(str(root))
    assert "secret/tls.crt" in everything
    assert not any(".." in part for path in everything for part in path.split("/")[:-1] if part.startswith(".."))
    assert not any(p.startswith("sub/loop-back-to-root") for p in everything)
    assert found(f"{root}/sub/b.crt") == {"sub/b.crt"}


def test_missing_literal_path_is_a_target_unless_ignored(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    assert probe_for(missing).targets().targets == (str(missing),)
    assert run(probe_for(missing), missing).reason is Reason.NOT_FOUND
    assert probe_for(missing, ignore_missing=True).targets().targets == ()


def test_max_files_stops_discovery_with_a_reason(tmp_path: Path, pki: Pki) -> None:
    for number in range(5):
        (tmp_path / f"{number}.pem").write_bytes(pki.valid.pem)
    discovery = probe_for(tmp_path, max_files=3).targets()
    assert len(discovery.targets) == 3
    assert [e.reason for e in discovery.errors] == [Reason.TOO_MANY_FILES]


def test_unchanged_file_is_not_parsed_again(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(pki.valid.pem)
    probe = probe_for(tmp_path)
    calls = []
    import probes.files as files_module

    real_parse = files_module.parse_container
    monkeypatch.setattr(files_module, "parse_container", lambda *a, **k: calls.append(a[1]) or real_parse(*a, **k))
    probe.targets()
    assert fingerprints(run(probe, path)) == [pki.valid.fingerprint]
    assert fingerprints(run(probe, path)) == [pki.valid.fingerprint]
    assert calls == [str(path)]  # the second run used the cache
    path.write_bytes(pki.expired.pem)  # a rotation: new size/mtime/inode
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fingerprints(run(probe, path)) == [pki.expired.fingerprint]
    assert len(calls) == 2


def test_discovery_vouches_for_unchanged_files_only(tmp_path: Path, pki: Pki) -> None:
    """targets() hands back the cached result of every file unchanged since its run
    (the scheduler then skips run()); any change leaves the file to run()."""
    names = ["same", "rewritten", "chmodded", "replaced", "deleted", "new"]
    for name in names[:-1]:
        (tmp_path / f"{name}.pem").write_bytes(pki.valid.pem)
    probe = probe_for(tmp_path)
    assert probe.targets().unchanged == {}  # nothing run yet
    first = {Path(t).stem: run(probe, t) for t in probe.targets().targets}
    later = time.time_ns() + 10**9
    (tmp_path / "rewritten.pem").write_bytes(pki.expired.pem)
    os.utime(tmp_path / "rewritten.pem", ns=(later, later))
    (tmp_path / "chmodded.pem").chmod(0o600)
    (tmp_path / "replaced.pem").rename(tmp_path / "moved")  # same bytes and mtime, another inode
    (tmp_path / "replaced.pem").write_bytes(pki.valid.pem)
    os.utime(tmp_path / "replaced.pem", ns=(os.stat(tmp_path / "moved").st_mtime_ns,) * 2)
    (tmp_path / "moved").unlink()
    (tmp_path / "deleted.pem").unlink()
    (tmp_path / "new.pem").write_bytes(pki.valid.pem)
    discovery = probe.targets()
    assert sorted(Path(t).stem for t in discovery.targets) == sorted(set(names) - {"deleted"})
    assert {Path(t).stem: r for t, r in discovery.unchanged.items()} == {"same": first["same"]}
    assert discovery.unchanged[str(tmp_path / "same.pem")] is first["same"]
    assert run(probe, tmp_path / "same.pem") is first["same"]  # what run() would have said


def test_identity_out_of_64_bit_range_still_compares() -> None:
    from probes.files import _identity

    def info(mtime_ns: int) -> os.stat_result:
        #            mode     ino dev nlink uid gid size  atime mtime ctime  float times   atime_ns  mtime_ns  ctime_ns
        return os.stat_result((0o100644, 7, 8, 1, 0, 0, 100, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime_ns, 0))

    packed, huge = _identity(info(10**18)), _identity(info(2**70))
    assert isinstance(packed, bytes) and isinstance(huge, tuple)
    assert huge == _identity(info(2**70)) and huge != _identity(info(2**70 + 1)) and huge != packed


# -- many new files: parsed in worker processes (probes/files_workers.py) ------------


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> tuple[Path, Path]:
    """Every format and bad input, each copied a few times, so that the first round
    has more new files than the (lowered) threshold; returns (tree, password file)."""
    tmp_path = tmp_path_factory.mktemp("many")
    formats = write_formats(pki, tmp_path / "formats")
    make_bad_files(tmp_path / "formats", pki)
    tree = tmp_path / "tree"
    for copy in range(4):
        for path in (tmp_path / "formats").iterdir():
            if path.is_file() and not path.name.startswith("fifo"):
                target = tree / f"c{copy}" / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    assert formats
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    return tree, password


def _comparable(result: ProbeResult) -> tuple[object, ...]:
    return (result.success, result.reason, result.message, result.certificates, result.errors, result.key_exposure)


def test_a_large_new_tree_is_parsed_in_workers_with_the_same_results(
    many: tuple[Path, Path], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    import multiprocessing

    from probes import files, files_workers

    tree, password = many
    settings = {"pkcs12": Pkcs12Password(password_file=str(password))}
    monkeypatch.setattr(files, "available_cpus", lambda: 2)
    monkeypatch.setattr(files_workers, "CHUNK_FILES", 7)  # several chunks per worker
    here = probe_for(tree, **settings)
    monkeypatch.setattr(files_workers, "MIN_FILES", 1_000_000)
    in_process = here.targets()
    assert not in_process.unchanged  # nothing parsed yet: every file goes to run()
    monkeypatch.setattr(files_workers, "MIN_FILES", 10)
    workers = probe_for(tree, **settings)
    discovery = workers.targets()
    assert multiprocessing.active_children() == []  # the workers have exited
    assert discovery.targets == in_process.targets and len(discovery.targets) >= 40
    # Every result run() keeps came from the workers, and is what run() gives here.
    expected = {target: _comparable(run(here, target)) for target in in_process.targets}
    kept = here.targets().unchanged  # a file over max_file_size is judged anew each round
    assert set(discovery.unchanged) == set(kept) and len(kept) >= 40
    for target, result in discovery.unchanged.items():
        assert _comparable(result) == expected[target], target
    # An intermediate in many files is one shared facts object, as when parsed here.
    intermediates = {
        id(o.cert)
        for result in discovery.unchanged.values()
        for o in result.certificates
        if o.cert.fingerprint_sha256 == pki.intermediate.fingerprint
    }
    assert len(intermediates) == 1


def test_workers_that_fail_leave_the_files_to_run(
    many: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from probes import files, files_workers

    tree, password = many

    class OneChunkThenBroken(files_workers.WorkerParse):
        def results(self) -> Iterator[files_workers.Parsed]:
            for chunk in super().results():
                yield chunk
                raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(files, "available_cpus", lambda: 2)
    monkeypatch.setattr(files_workers, "MIN_FILES", 10)
    monkeypatch.setattr(files_workers, "CHUNK_FILES", 7)
    monkeypatch.setattr(files_workers, "WorkerParse", OneChunkThenBroken)
    probe = probe_for(tree, pkcs12=Pkcs12Password(password_file=str(password)))
    discovery = probe.targets()
    assert 0 < len(discovery.unchanged) <= 7
    assert "parsing in worker processes failed (BrokenProcessPool: a worker died)" in caplog.text
    reference = probe_for(tree, pkcs12=Pkcs12Password(password_file=str(password)))
    for target in discovery.targets:
        if target not in discovery.unchanged:
            assert _comparable(run(probe, target)) == _comparable(run(reference, target)), target


def test_one_cpu_parses_in_the_daemon(many: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from probes import files, files_workers

    tree, _ = many
    monkeypatch.setattr(files, "available_cpus", lambda: 1)
    monkeypatch.setattr(files_workers, "MIN_FILES", 10)
    assert not probe_for(tree).targets().unchanged


def test_closing_the_probe_stops_its_workers(
    many: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """close() while a batch runs (the daemon stopping) drops the chunks not started;
    the round goes on quietly with what came back, and no worker outlives it."""
    import multiprocessing

    from probes import files, files_workers

    tree, _ = many
    probes: list[FilesProbe] = []

    class ClosedAfterOneChunk(files_workers.WorkerParse):
        def results(self) -> Iterator[files_workers.Parsed]:
            for chunk in super().results():
                yield chunk
                probes[0].close()  # as the scheduler does from another thread

    monkeypatch.setattr(files, "available_cpus", lambda: 2)
    monkeypatch.setattr(files_workers, "MIN_FILES", 10)
    monkeypatch.setattr(files_workers, "CHUNK_FILES", 3)
    monkeypatch.setattr(files_workers, "WorkerParse", ClosedAfterOneChunk)
    probes.append(probe_for(tree))
    started = time.monotonic()
    discovery = probes[0].targets()
    assert time.monotonic() - started < 10
    assert 0 < len(discovery.unchanged) < len(discovery.targets)
    assert "worker processes failed" not in caplog.text
    assert multiprocessing.active_children() == []


def test_workers_that_cannot_start_leave_the_files_to_run(
    many: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No /dev/shm (a locked-down container): the pool cannot be made; the round
    goes on in the daemon."""
    from probes import files, files_workers

    def no_pool(*args: object, **kwargs: object) -> None:
        raise OSError(38, "Function not implemented")  # what SemLock raises without /dev/shm

    tree, _ = many
    monkeypatch.setattr(files, "available_cpus", lambda: 2)
    monkeypatch.setattr(files_workers, "MIN_FILES", 10)
    monkeypatch.setattr(files_workers, "ProcessPoolExecutor", no_pool)
    probe = probe_for(tree)
    discovery = probe.targets()
    assert not discovery.unchanged and len(discovery.targets) >= 40
    assert "parsing in worker processes failed (OSError" in caplog.text
    valid = next(t for t in discovery.targets if t.endswith("/valid.pem"))
    assert run(probe, valid).success  # parsed here instead


def test_a_pkcs12_opens_beside_thousands_of_open_descriptors(formats: dict[str, Path], tmp_path: Path) -> None:
    """The PKCS#12 worker's pipes get descriptors above 1,024 when the daemon holds
    thousands of sockets; they must still be waited on (select() cannot)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 1_200, f"the test needs 1,200 descriptors, the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1_200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1_100)]
    try:
        assert max(held) > 1_024
        password = tmp_path / "password"
        password.write_text("correct horse\n")
        probe = probe_for(formats["bundle.p12"], pkcs12=Pkcs12Password(password_file=str(password)))
        result = run(probe, formats["bundle.p12"])
        assert result.success, result.message
        assert len(result.certificates) == 2
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
