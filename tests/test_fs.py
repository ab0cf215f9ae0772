"""repo:// over local folders and memory: names, permissions, escapes, usage, pandas, pickling."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repolib
from repolib import usage
from repolib.fs import RepositoryFileSystem
from tests.helpers import Clock


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "raw" / "sub").mkdir(parents=True)
    (d / "raw" / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (d / "raw" / "sub" / "b.txt").write_text("bee")
    (d / "docs").mkdir()
    (d / "docs" / "readme.md").write_text("# docs\n")
    (d / "secret.txt").write_text("outside every resource")
    return d


@pytest.fixture
def local_repo(catalog: repolib.Catalog, data: Path) -> repolib.Repository:
    r = catalog.create_repository("analytics")
    r.add_storage("raw", f"file://{data / 'raw'}")
    r.add_storage("docs", f"file://{data / 'docs'}", read_only=True)
    r.add_storage("scratch", f"memory://scratch-{os.getpid()}-{time.monotonic_ns()}")
    return r


def fs_for(repo: repolib.Repository, access: str = "write", **kw: object) -> RepositoryFileSystem:
    token = repo.create_key(f"k-{access}", access, **kw).token  # type: ignore[arg-type]
    return fsspec.filesystem("repo", key=token, skip_instance_cache=True)


def test_names_are_repository_resource_path(local_repo: repolib.Repository) -> None:
    fs = fs_for(local_repo)
    assert fs.ls("", detail=False) == ["analytics"]
    assert fs.ls("repo://analytics", detail=False) == [
        "analytics/docs",
        "analytics/raw",
        "analytics/scratch",
    ]
    assert sorted(fs.ls("analytics/raw", detail=False)) == [
        "analytics/raw/a.csv",
        "analytics/raw/sub",
    ]
    assert fs.info("analytics/raw/a.csv")["name"] == "analytics/raw/a.csv"
    assert fs.info("analytics/raw/a.csv")["size"] == 12
    assert fs.info("analytics/raw")["type"] == "directory"
    assert fs.find("analytics/raw") == ["analytics/raw/a.csv", "analytics/raw/sub/b.txt"]
    assert fs.glob("analytics/*/*.csv") == ["analytics/raw/a.csv"]
    assert "analytics/docs/readme.md" in fs.find("analytics")
    walked = {root: sorted(files) for root, _, files in fs.walk("analytics/raw")}
    assert walked == {"analytics/raw": ["a.csv"], "analytics/raw/sub": ["b.txt"]}
    assert fs.du("analytics/raw") == 15
    assert fs.cat("repo://analytics/raw/sub/b.txt") == b"bee"
    assert fs.cat_file("analytics/raw/a.csv", start=2, end=5) == b"y\n1"
    assert fs.cat_ranges(["analytics/raw/a.csv", "analytics/raw/sub/b.txt"], [0, 1], [1, 3]) == [
        b"x",
        b"ee",
    ]
    assert fs.modified("analytics/raw/a.csv").year >= 2024
    assert fs.checksum("analytics/raw/a.csv") == fs.checksum("analytics/raw/a.csv")
    assert fs.ukey("analytics/raw/a.csv")
    assert fs.exists("analytics/raw/a.csv") and not fs.exists("analytics/raw/nope")
    with pytest.raises(FileNotFoundError):
        fs.info("analytics/raw/nope")
    with pytest.raises(FileNotFoundError):
        fs.ls("analytics/nosuchresource")


def test_repo_fs_view_and_fsspec_open(local_repo: repolib.Repository, home: Path) -> None:
    token = local_repo.create_key("reader", "read").token
    with fsspec.open("repo://analytics/raw/a.csv", "r", key=token) as f:
        assert f.readline() == "x,y\n"
    r = repolib.open("analytics", key=token)
    assert r.fs.cat("analytics/raw/sub/b.txt") == b"bee"
    admin_fs = local_repo.fs  # the admin secret's view works too
    assert admin_fs.cat("analytics/docs/readme.md").startswith(b"# docs")


def test_key_from_environment_and_file(
    local_repo: repolib.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = local_repo.create_key("reader", "read").token
    monkeypatch.setenv("REPOLIB_KEY", token)
    assert (
        fsspec.filesystem("repo", skip_instance_cache=True).cat("analytics/raw/sub/b.txt") == b"bee"
    )
    monkeypatch.delenv("REPOLIB_KEY")
    f = tmp_path / "k"
    f.write_text(token + "\n")
    monkeypatch.setenv("REPOLIB_KEY_FILE", str(f))
    assert fsspec.filesystem("repo", skip_instance_cache=True).exists("analytics/raw/a.csv")
    monkeypatch.delenv("REPOLIB_KEY_FILE")
    with pytest.raises(repolib.InvalidKey, match="no API key"):
        fsspec.filesystem("repo", skip_instance_cache=True)


def test_writes_reads_copies_and_moves(local_repo: repolib.Repository, data: Path) -> None:
    fs = fs_for(local_repo)
    fs.pipe("analytics/raw/new/file.bin", b"\x00\x01" * 1000)
    assert (data / "raw" / "new" / "file.bin").read_bytes() == b"\x00\x01" * 1000
    with fs.open("analytics/raw/new/file.bin", "ab") as f:
        f.write(b"tail")
    assert fs.size("analytics/raw/new/file.bin") == 2004
    with pytest.raises(FileExistsError):
        fs.pipe_file("analytics/raw/new/file.bin", b"x", mode="create")
    with pytest.raises(FileExistsError):
        with fs.open("analytics/raw/new/file.bin", "xb") as f:
            f.write(b"x")
    with fs.open("analytics/scratch/t.txt", "w") as f:
        f.write("text mode")
    assert fs.cat("analytics/scratch/t.txt") == b"text mode"
    fs.cp("analytics/raw/a.csv", "analytics/scratch/copy.csv")  # across resources, streamed
    assert fs.cat("analytics/scratch/copy.csv") == (data / "raw" / "a.csv").read_bytes()
    fs.cp("analytics/raw/a.csv", "analytics/raw/a2.csv")  # within one: the backend's copy
    fs.mv("analytics/raw/a2.csv", "analytics/raw/moved.csv")
    assert not (data / "raw" / "a2.csv").exists() and (data / "raw" / "moved.csv").exists()
    fs.mv("analytics/raw/moved.csv", "analytics/scratch/moved.csv")
    assert not (data / "raw" / "moved.csv").exists()
    assert fs.cat("analytics/scratch/moved.csv").startswith(b"x,y")
    fs.cp("analytics/raw/sub", "analytics/scratch/subcopy", recursive=True)
    assert fs.cat("analytics/scratch/subcopy/b.txt") == b"bee"
    fs.rm("analytics/raw/new", recursive=True)
    assert not (data / "raw" / "new").exists()
    fs.makedirs("analytics/raw/d1/d2", exist_ok=True)
    assert (data / "raw" / "d1" / "d2").is_dir()
    fs.rmdir("analytics/raw/d1/d2")
    assert not (data / "raw" / "d1" / "d2").exists()


def test_put_and_get(local_repo: repolib.Repository, tmp_path: Path) -> None:
    fs = fs_for(local_repo)
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "inner" / "two.txt").write_text("22")
    fs.put(str(src), "analytics/scratch/up", recursive=True)
    assert fs.cat("analytics/scratch/up/inner/two.txt") == b"22"
    out = tmp_path / "out"
    fs.get("analytics/scratch/up", str(out), recursive=True)
    assert (out / "inner" / "two.txt").read_text() == "22"


def test_rm_of_a_resource_root_empties_it_but_keeps_it(
    local_repo: repolib.Repository, data: Path
) -> None:
    fs = fs_for(local_repo)
    fs.rm("analytics/raw", recursive=True)
    assert (data / "raw").is_dir() and list((data / "raw").iterdir()) == []
    assert fs.ls("analytics/raw") == []
    with pytest.raises(repolib.AccessDenied):
        fs.rmdir("analytics/raw")


# -- permissions ----------------------------------------------------------------------------

READ_OPS = {
    "ls": lambda fs, p: fs.ls(p),
    "info": lambda fs, p: fs.info(p),
    "cat": lambda fs, p: fs.cat_file(p),
    "open-rb": lambda fs, p: fs.open(p, "rb").close(),
    "find": lambda fs, p: fs.find(p),
    "exists": lambda fs, p: fs.exists(p),
}
WRITE_OPS = {
    "pipe": lambda fs, p: fs.pipe_file(p + ".w", b"x"),
    "open-wb": lambda fs, p: fs.open(p + ".w2", "wb").close(),
    "open-ab": lambda fs, p: fs.open(p, "ab").close(),
    "open-r+b": lambda fs, p: fs.open(p, "r+b").close(),
    "rm": lambda fs, p: fs.rm(p),
    "mkdir": lambda fs, p: fs.makedirs(p + ".d", exist_ok=True),
    "mv": lambda fs, p: fs.mv(p, p + ".moved"),
    "cp-into": lambda fs, p: fs.cp_file(p, p + ".copy"),
}


@pytest.mark.parametrize("level", ["read", "write", "admin"])
@pytest.mark.parametrize("op", sorted(READ_OPS) + sorted(WRITE_OPS))
@pytest.mark.parametrize("in_scope", [True, False])
def test_permission_matrix(
    local_repo: repolib.Repository, level: str, op: str, in_scope: bool
) -> None:
    fs = fs_for(local_repo, level, resources=["scratch"])
    target = "analytics/scratch/f.txt" if in_scope else "analytics/raw/a.csv"
    # set up the file through an unrestricted key
    fs_for(local_repo, "write").pipe_file("analytics/scratch/f.txt", b"data")
    call = READ_OPS.get(op) or WRITE_OPS[op]
    allowed = in_scope and (op in READ_OPS or level in ("write", "admin"))
    if allowed:
        call(fs, target)
        return
    with pytest.raises(PermissionError) as exc:
        call(fs, target)
    assert exc.value.errno == errno.EACCES
    assert isinstance(exc.value, repolib.AccessDenied)
    assert "analytics/" in str(exc.value)  # names the path
    verb = str(exc.value).split()[0]
    assert verb in {"list", "stat", "read", "write", "delete", "mkdir", "move"}


def test_out_of_scope_resources_are_invisible(local_repo: repolib.Repository) -> None:
    fs = fs_for(local_repo, "read", resources=["docs"])
    assert fs.ls("analytics", detail=False) == ["analytics/docs"]
    assert fs.find("analytics") == ["analytics/docs/readme.md"]


def test_read_only_resource_refuses_writes_for_every_key(local_repo: repolib.Repository) -> None:
    for level in ("write", "admin"):
        fs = fs_for(local_repo, level)
        with pytest.raises(repolib.AccessDenied, match="read-only"):
            fs.pipe_file("analytics/docs/new.md", b"x")
        with pytest.raises(repolib.AccessDenied, match="read-only"):
            fs.rm("analytics/docs/readme.md")
    assert local_repo.fs.cat("analytics/docs/readme.md")


def test_check_writable_without_io_checks_only_when_it_needs_none(
    local_repo: repolib.Repository,
) -> None:
    fs = fs_for(local_repo, "write")
    assert fs.check_writable("analytics/raw/new.csv", io=False) is False  # no client built yet
    assert fs.check_writable("analytics/raw/new.csv") is True  # (builds it)
    assert fs.check_writable("analytics/raw/other.csv", io=False) is True
    fs.ls("analytics/docs")
    with pytest.raises(repolib.AccessDenied, match="read-only"):
        fs.check_writable("analytics/docs/new.md", io=False)  # refused on the spot too
    reader = fs_for(local_repo, "read")
    reader.ls("analytics/raw")
    with pytest.raises(repolib.AccessDenied):
        reader.check_writable("analytics/raw/new.csv", io=False)


def test_key_of_another_repository(
    local_repo: repolib.Repository, catalog: repolib.Catalog
) -> None:
    other = catalog.create_repository("finance")
    other.add_storage("ledger", "memory://ledger")
    token = other.create_key("f", "admin").token
    with pytest.raises(repolib.InvalidKey):
        fsspec.filesystem("repo", repo="analytics", key=token, skip_instance_cache=True)
    fs = fsspec.filesystem("repo", key=token, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.ls("analytics/raw")


def test_revoked_key_stops_within_seconds(local_repo: repolib.Repository) -> None:
    from repolib.fs import REVALIDATE_S

    issued = local_repo.create_key("app", "read")
    clock = Clock(1000.0)
    fs = repolib.open("analytics", key=issued.token, monotonic=clock).fs
    assert fs.cat("analytics/raw/sub/b.txt") == b"bee"
    local_repo.revoke_key(issued.key_id)
    assert fs.cat("analytics/raw/sub/b.txt") == b"bee"  # trusted for REVALIDATE_S
    clock.t += REVALIDATE_S
    with pytest.raises(repolib.InvalidKey):
        fs.cat("analytics/raw/sub/b.txt")


def test_rotated_key_file_is_reread(
    local_repo: repolib.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import repolib.fs as fsmod

    monkeypatch.setattr(fsmod, "REVALIDATE_S", 0.0)
    issued = local_repo.create_key("app", "read")
    f = tmp_path / "app.key"
    f.write_text(issued.token)
    monkeypatch.setenv("REPOLIB_KEY_FILE", str(f))
    fs = fsspec.filesystem("repo", skip_instance_cache=True)
    assert fs.exists("analytics/raw/a.csv")
    new = local_repo.rotate_key(issued.key_id, grace=0)
    f.write_text(new.token)
    assert fs.cat("analytics/raw/sub/b.txt") == b"bee"


def test_updated_credentials_rebuild_the_backend(
    local_repo: repolib.Repository, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import repolib.fs as fsmod

    monkeypatch.setattr(fsmod, "REVALIDATE_S", 0.0)
    fs = fs_for(local_repo)
    assert fs.exists("analytics/docs/readme.md")
    other = data / "docs2"
    other.mkdir()
    (other / "new.md").write_text("new")
    local_repo.remove_resource("docs")
    local_repo.add_storage("docs", f"file://{other}")
    assert fs.ls("analytics/docs", detail=False) == ["analytics/docs/new.md"]


# -- paths cannot escape --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "analytics/raw/../secret.txt",
        "analytics/raw/sub/../../secret.txt",
        "analytics/raw/./a.csv",
        "analytics/raw//a.csv",
        "analytics/raw/a\\..\\..\\secret.txt",
        "analytics/raw/%2e%2e/x",
        "analytics/raw/..%2fsecret.txt",
        "analytics/raw/a\x00b",
        "/etc/passwd",
        "analytics/raw/%2E%2E/secret.txt",
        "analytics/../x",
    ],
)
def test_escaping_paths_are_refused(local_repo: repolib.Repository, bad: str) -> None:
    fs = fs_for(local_repo)
    for call in (fs.cat_file, fs.info, lambda p: fs.pipe_file(p, b"x")):
        with pytest.raises(PermissionError):
            call(bad)


def test_symlink_out_of_a_local_folder_is_refused(
    local_repo: repolib.Repository, data: Path
) -> None:
    (data / "raw" / "link").symlink_to(data / "secret.txt")
    (data / "raw" / "dirlink").symlink_to(data)
    fs = fs_for(local_repo)
    with pytest.raises(PermissionError, match="symlink"):
        fs.cat_file("analytics/raw/link")
    with pytest.raises(PermissionError, match="symlink"):
        fs.cat_file("analytics/raw/dirlink/secret.txt")
    with pytest.raises(PermissionError):
        fs.pipe_file("analytics/raw/dirlink/planted.txt", b"x")
    assert not (data / "planted.txt").exists()


segment = st.one_of(
    st.sampled_from(
        [
            "..",
            ".",
            "",
            "%2e%2e",
            "%2E%2e",
            "..\\",
            "\\..",
            "a",
            "sub",
            "b.txt",
            "..%2f",
            "%2f",
            "\x00",
            "~",
            "...",
            "secret.txt",
            "a.csv",
            "%5c",
        ]
    ),
    st.text(min_size=1, max_size=6),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(segment, min_size=1, max_size=6), lead=st.sampled_from(["", "/", "//"]))
def test_no_generated_path_reaches_outside(
    local_repo: repolib.Repository, data: Path, parts: list[str], lead: str
) -> None:
    fs = fs_for_cached(local_repo)
    path = lead + "analytics/raw/" + "/".join(parts)
    try:
        got = fs.cat_file(path)
    except (OSError, ValueError):
        return
    assert got != (data / "secret.txt").read_bytes()
    # whatever was read lies inside the resource folder
    rel = fs._split(path).rel
    real = os.path.realpath(data / "raw" / rel)
    assert real.startswith(str(data / "raw"))


_cached: dict[str, RepositoryFileSystem] = {}


def fs_for_cached(repo: repolib.Repository) -> RepositoryFileSystem:
    k = repo.home
    if k not in _cached:
        _cached[k] = fs_for(repo, "read")
    return _cached[k]


# -- usage ----------------------------------------------------------------------------------


def usage_of(catalog: repolib.Catalog, key_id: str) -> dict[str, dict[str, float]]:
    usage.flush_all()
    out: dict[str, dict[str, float]] = {}
    for row in catalog.usage_rows("analytics"):
        if row["key_id"] == key_id:
            out.setdefault(row["resource"], {})[row["metric"]] = (
                out.setdefault(row["resource"], {}).get(row["metric"], 0) + row["value"]
            )
    return out


@pytest.mark.stores("sqlite", "postgres")
def test_usage_counts_bytes_moved(local_repo: repolib.Repository, catalog: repolib.Catalog) -> None:
    issued = local_repo.create_key("meter", "write")
    fs = fsspec.filesystem("repo", key=issued.token, skip_instance_cache=True)
    fs.pipe_file("analytics/scratch/u.bin", b"x" * 1000)
    assert fs.cat_file("analytics/scratch/u.bin") == b"x" * 1000
    with fs.open("analytics/scratch/u.bin", "rb") as f:
        f.read(100)
        f.read(50)
    with fs.open("analytics/scratch/v.bin", "wb") as f:
        f.write(b"y" * 300)
    fs.cat_ranges(["analytics/scratch/u.bin"], [0], [10])
    u = usage_of(catalog, issued.key_id)["scratch"]
    assert u["bytes_written"] == 1300
    assert u["bytes_read"] == 1000 + 150 + 10
    assert u["requests"] >= 5


@pytest.mark.stores("sqlite", "postgres")
def test_usage_from_threads_and_processes(
    local_repo: repolib.Repository, catalog: repolib.Catalog, home: Path
) -> None:
    issued = local_repo.create_key("meter", "read")
    fs = fsspec.filesystem("repo", key=issued.token, skip_instance_cache=True)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: fs.cat_file("analytics/raw/a.csv"), range(20)))
    # a forked child counts only its own reads; the parent's unflushed counts are not copied
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            child = fsspec.filesystem("repo", key=issued.token, skip_instance_cache=True)
            for _ in range(5):
                child.cat_file("analytics/raw/a.csv")
            usage.flush_all()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    script = (
        "import fsspec,sys\nfs=fsspec.filesystem('repo', key=sys.argv[1])\n"
        "[fs.cat_file('analytics/raw/a.csv') for _ in range(7)]\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, issued.token],
        check=True,
        timeout=120,
        env={**os.environ, "REPOLIB_HOME": str(home)},
    )
    u = usage_of(catalog, issued.key_id)["raw"]
    assert u["bytes_read"] == 12 * (20 + 5 + 7)


# -- pickling, pandas -----------------------------------------------------------------------


def test_pickles_without_credentials(catalog: repolib.Catalog) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage("raw", "s3://bucket", key="AKIAPICKLE000000", secret="pickle-secret-value")
    token = repo.create_key("w", "read").token
    fs = fsspec.filesystem("repo", key=token, skip_instance_cache=True)
    blob = pickle.dumps(fs)
    assert b"pickle-secret-value" not in blob and b"AKIAPICKLE" not in blob
    again = pickle.loads(blob)
    assert again.repository.key_id == fs.repository.key_id
    assert "pickle-secret-value" not in repr(fs)
    view = pickle.loads(pickle.dumps(repolib.open("analytics", key=token).fs))
    assert view.repository.name == "analytics"


def test_pandas_round_trip(local_repo: repolib.Repository) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra")
    pytest.importorskip("pyarrow", reason="pyarrow is in the test extra")
    token = local_repo.create_key("nb", "write").token
    so = {"key": token}
    df = pd.read_csv("repo://analytics/raw/a.csv", storage_options=so)
    assert df.to_dict("list") == {"x": [1, 3], "y": [2, 4]}
    df["z"] = df.x + df.y
    df.to_parquet("repo://analytics/scratch/out.parquet", storage_options=so)
    back = pd.read_parquet("repo://analytics/scratch/out.parquet", storage_options=so)
    assert back.to_dict("list") == {"x": [1, 3], "y": [2, 4], "z": [3, 7]}
    df.to_csv("repo://analytics/raw/out.csv", storage_options=so, index=False)
    assert pd.read_csv("repo://analytics/raw/out.csv", storage_options=so).shape == (2, 3)


def test_failed_local_write_keeps_the_old_file(local_repo: repolib.Repository, data: Path) -> None:
    fs = fs_for(local_repo)
    old = (data / "raw" / "a.csv").read_bytes()
    with pytest.raises(RuntimeError), fs.open("analytics/raw/a.csv", "wb") as f:
        f.write(b"half a new ver")
        raise RuntimeError("the writer died")
    assert (data / "raw" / "a.csv").read_bytes() == old
    assert sorted(p.name for p in (data / "raw").iterdir()) == ["a.csv", "sub"]  # no temp left
    with fs.open("analytics/raw/a.csv", "wb") as f:
        f.write(b"new")
    assert (data / "raw" / "a.csv").read_bytes() == b"new"


def test_entries_carry_a_float_mtime(local_repo: repolib.Repository) -> None:
    fs = fs_for(local_repo)
    fs.pipe_file("analytics/scratch/m.txt", b"m")
    for path in ("analytics/raw/a.csv", "analytics/scratch/m.txt"):
        assert isinstance(fs.info(path)["mtime"], float)


def test_empty_resources_list_empty_and_missing_folders_say_so(
    catalog: repolib.Catalog, tmp_path: Path
) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage("fresh", f"memory://fresh-{time.monotonic_ns()}")
    repo.add_storage("gone", f"file://{tmp_path / 'missing'}")
    fs = fs_for(repo, "read")
    assert fs.ls("analytics/fresh") == [] and fs.find("analytics/fresh") == []
    with pytest.raises(FileNotFoundError):
        fs.ls("analytics/gone")


def test_temp_files_of_atomic_writes_are_never_listed(
    local_repo: repolib.Repository, data: Path
) -> None:
    from repolib.fs import is_temp_name

    (data / "raw" / ".a.csv.repolib-0123abcd.tmp").write_text("half")
    fs = fs_for(local_repo, "read")
    assert is_temp_name(".a.csv.repolib-0123abcd.tmp") and not is_temp_name("a.csv")
    assert "analytics/raw/.a.csv.repolib-0123abcd.tmp" not in fs.ls("analytics/raw", False)
    assert all("repolib-" not in p for p in fs.find("analytics/raw"))


def test_a_key_file_given_explicitly_is_followed_after_rotation(
    local_repo: repolib.Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import repolib.fs as fsmod

    monkeypatch.setattr(fsmod, "REVALIDATE_S", 0.0)
    issued = local_repo.create_key("app", "read")
    f = tmp_path / "app.key"
    f.write_text(issued.token + "\n")
    repo = repolib.Catalog().open_key_file("analytics", str(f))
    fs = repo.fs
    assert fs.cat("analytics/raw/sub/b.txt") == b"bee"
    f.write_text(local_repo.rotate_key(issued.key_id, grace=0).token + "\n")
    assert fs.cat("analytics/raw/sub/b.txt") == b"bee"
