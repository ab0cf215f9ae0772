"""The mount over object stores: an S3 bucket (rclone serve s3), GCS and Azure test servers."""

from __future__ import annotations

import filecmp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import repolib

from . import servers
from .conftest import new_bucket, s3_options
from .test_mount import World, mounted

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse here")


@pytest.fixture(scope="module")
def objects_world(tmp_path_factory: pytest.TempPathFactory, rclone_server: servers.S3Server,
                  gcs_server: servers.GCSServer, azure_server: servers.AzuriteServer
                  ) -> Iterator[World]:
    top = tmp_path_factory.mktemp("objworld")
    home, cache = top / "home", top / "cache"
    cache.mkdir()
    cat = repolib.Catalog(home)
    cat.init()
    r = cat.create_repository("analytics")
    r.add_storage("bucket", f"s3://{new_bucket(rclone_server)}/data",
                  **s3_options(rclone_server))
    gcs = servers.make_bucket(gcs_server, f"g{os.getpid()}x{os.urandom(3).hex()}")
    r.add_storage("gcs", f"gs://{gcs}/data", endpoint_url=gcs_server.endpoint_url,
                  project=gcs_server.project, token="anon")
    az = servers.make_bucket(azure_server, f"a{os.getpid()}x{os.urandom(3).hex()}")
    r.add_storage("blob", f"az://{az}/data",
                  endpoint_url=azure_server.blob_endpoint.rsplit("/", 1)[0],
                  account_name=azure_server.account_name,
                  account_key=azure_server.account_key)
    w = World(home, top, top, cache, r.create_key("writer", "write").token,
              r.create_key("reader", "read").token, cat)
    yield w
    cat.close()


@pytest.mark.parametrize("resource", ["bucket", "gcs", "blob"])
def test_shell_tools_on_object_stores(objects_world: World, tmp_path: Path,
                                      resource: str) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 2**20 + 123))
    with mounted(objects_world, tmp_path / "mnt", objects_world.write_key) as mp:
        root = mp / resource
        subprocess.run(["cp", str(src), str(root / "big.bin")], check=True, timeout=120)
        assert filecmp.cmp(src, root / "big.bin", shallow=False)
        (root / "dir").mkdir()
        (root / "dir" / "note.txt").write_text("hello\n")
        listing = subprocess.run(["ls", "-l", str(root)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        assert "big.bin" in listing and str(5 * 2**20 + 123) in listing
        subprocess.run(["dd", f"if={src}", f"of={root / 'dd.bin'}", "bs=1M", "status=none"],
                       check=True, timeout=120)
        assert subprocess.run(["cmp", str(src), str(root / "dd.bin")], timeout=120).returncode \
            == 0
        with open(root / "big.bin", "rb") as f:
            f.seek(3 * 2**20 + 7)
            assert f.read(4096) == src.read_bytes()[3 * 2**20 + 7:3 * 2**20 + 7 + 4096]
        os.rename(root / "dd.bin", root / "moved.bin")
        assert not (root / "dd.bin").exists() and (root / "moved.bin").exists()
        subprocess.run(["rm", "-r", str(root / "dir")], check=True, timeout=60)
        assert not (root / "dir").exists()
    # what went through the mount reached the server: read it back through repo://
    fs = fsspec.filesystem("repo", key=objects_world.read_key, home=str(objects_world.home),
                           skip_instance_cache=True)
    assert fs.cat_file(f"analytics/{resource}/big.bin") == src.read_bytes()
    assert sorted(fs.ls(f"analytics/{resource}", detail=False)) == [
        f"analytics/{resource}/big.bin", f"analytics/{resource}/moved.bin"]
    fs.invalidate_cache()
