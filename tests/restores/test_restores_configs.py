"""Config restores: bad tars are refused with nothing written outside the new directory; swaps and rollbacks."""

import io
import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from restores import configs
from restores.configs import ConfigArchiveRefused, ConfigCopyKind, ConfigSwapError


def make_tar(path: Path, members: list[tuple], *, mode: str = "w") -> Path:
    """Write a tar of (name, kind, payload) members: kind is file, dir, symlink, hardlink, fifo, chr or blk."""
    with tarfile.open(path, mode) as archive:
        for name, kind, *rest in members:
            payload = rest[0] if rest else b""
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}[kind]
            if kind == "dir":
                info.mode = 0o755
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            archive.addfile(info)
    return path


@pytest.fixture
def site(tmp_path):
    """``srv/app`` (the live config directory, with one file) inside a sandbox we can list completely."""
    config = tmp_path / "srv" / "app"
    config.mkdir(parents=True)
    (config / "app.env").write_text("MODE=old\n")
    config.chmod(0o750)
    return config


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_id() -> str:
    return str(uuid.uuid4())


GOOD = [("./app.env", "file", "MODE=restored\n"), ("nginx", "dir"), ("nginx/site.conf", "file", "listen 80;\n"),
        ("current.env", "symlink", "app.env"), ("nginx/default.conf", "hardlink", "nginx/site.conf")]


def test_a_good_tar_is_extracted_beside_the_directory_then_swapped_in(site, tmp_path):
    tar = make_tar(tmp_path / "config.tar.gz", GOOD, mode="w:gz")
    run = run_id()
    new_dir, summary = configs.extract_config_tar(tar, site, run)
    assert new_dir == site.with_name(f"app.restore-{uuid.UUID(run).hex[:12]}")
    assert (summary.members, summary.files) == (5, 2)
    assert (site / "app.env").read_text() == "MODE=old\n", "nothing changes before the swap"
    result = configs.swap_config_dir(site, run)
    assert (site / "app.env").read_text() == "MODE=restored\n"
    assert (site / "nginx" / "default.conf").read_text() == "listen 80;\n"
    assert os.readlink(site / "current.env") == "app.env"
    assert stat.S_IMODE(site.stat().st_mode) == 0o750, "the new directory keeps the old one's permissions"
    pre = configs.config_copy_path(site, run, ConfigCopyKind.PRE)
    assert result.moved_aside == str(pre) and (pre / "app.env").read_text() == "MODE=old\n"
    assert not new_dir.exists()


def test_swap_back_restores_the_previous_directory(site, tmp_path):
    run = run_id()
    configs.extract_config_tar(make_tar(tmp_path / "c.tar", GOOD), site, run)
    configs.swap_config_dir(site, run)
    result = configs.swap_back_config_dir(site, run)
    assert (site / "app.env").read_text() == "MODE=old\n"
    failed = configs.config_copy_path(site, run, ConfigCopyKind.FAILED)
    assert result.moved_aside == str(failed) and (failed / "app.env").read_text() == "MODE=restored\n"
    assert configs.drop_config_copy(site, run, ConfigCopyKind.FAILED)
    assert sorted(p.name for p in site.parent.iterdir()) == ["app"]


BAD_TARS = {
    "parent directory": ([("../evil.env", "file", "x")], "contains '..'"),
    "parent inside a path": ([("nginx/../../evil.env", "file", "x")], "contains '..'"),
    "absolute path": ([("/tmp/evil.env", "file", "x")], "absolute path"),
    "symlink out": ([("escape", "symlink", "../../etc")], "leading out"),
    "absolute symlink": ([("passwd", "symlink", "/etc/passwd")], "absolute path"),
    "write through a symlink": ([("link", "symlink", ".."), ("link/evil.env", "file", "x")], "leading out"),
    "hardlink out": ([("shadow", "hardlink", "/etc/shadow")], "hard link leading out"),
    "hardlink up": ([("h", "hardlink", "../outside.env")], "contains|leading out"),
    "fifo": ([("pipe", "fifo")], "FIFO"),
    "character device": ([("zero", "chr")], "device"),
    "block device": ([("disk", "blk")], "device"),
}


@pytest.mark.parametrize("case", BAD_TARS, ids=list(BAD_TARS))
def test_a_bad_tar_is_refused_with_nothing_written_outside_the_new_directory(site, tmp_path, case):
    members, reason = BAD_TARS[case]
    tar = make_tar(tmp_path / "bad.tar", [("ok.env", "file", "fine"), *members])
    before = everything(tmp_path)
    with pytest.raises(ConfigArchiveRefused, match=reason):
        configs.extract_config_tar(tar, site, run_id())
    assert everything(tmp_path) == before
    assert (site / "app.env").read_text() == "MODE=old\n"


def test_too_many_members_are_refused_before_reading_the_rest(site, tmp_path):
    tar = make_tar(tmp_path / "many.tar", [(f"f{n}", "file", "x") for n in range(30)])
    before = everything(tmp_path)
    with pytest.raises(ConfigArchiveRefused, match="more than 10 members"):
        configs.extract_config_tar(tar, site, run_id(), max_members=10)
    assert everything(tmp_path) == before


def test_too_many_bytes_are_refused(site, tmp_path):
    tar = make_tar(tmp_path / "big.tar", [("a", "file", b"x" * 600), ("b", "file", b"y" * 600)])
    before = everything(tmp_path)
    with pytest.raises(ConfigArchiveRefused, match="more than 1000 bytes"):
        configs.extract_config_tar(tar, site, run_id(), max_bytes=1000)
    assert everything(tmp_path) == before


def test_a_file_that_is_not_a_tar_is_refused(site, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(ConfigArchiveRefused, match="not a readable tar"):
        configs.extract_config_tar(junk, site, run_id())


def test_the_limits_come_from_the_settings(settings, site, tmp_path):
    settings.CONFIG_RESTORE_MAX_MEMBERS = 2
    with pytest.raises(ConfigArchiveRefused, match="more than 2 members"):
        configs.check_config_tar(make_tar(tmp_path / "three.tar", [("a", "file"), ("b", "file"), ("c", "file")]))


def test_the_data_filter_drops_dangerous_mode_bits(site, tmp_path):
    tar_path = tmp_path / "modes.tar"
    with tarfile.open(tar_path, "w") as archive:
        info = tarfile.TarInfo("run.sh")
        info.mode = 0o6777
        info.size = 2
        archive.addfile(info, io.BytesIO(b"#!"))
    new_dir, _ = configs.extract_config_tar(tar_path, site, run_id())
    mode = stat.S_IMODE((new_dir / "run.sh").stat().st_mode)
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH)


def test_an_earlier_attempt_of_the_same_run_is_not_silently_overwritten(site, tmp_path):
    run = run_id()
    tar = make_tar(tmp_path / "c.tar", GOOD)
    configs.extract_config_tar(tar, site, run)
    with pytest.raises(ConfigSwapError, match="already exists"):
        configs.extract_config_tar(tar, site, run)


def test_a_first_config_restore_creates_the_directory(tmp_path):
    config = tmp_path / "fresh" / "conf"
    config.parent.mkdir()
    run = run_id()
    configs.extract_config_tar(make_tar(tmp_path / "c.tar", GOOD), config, run)
    assert configs.swap_config_dir(config, run).moved_aside is None
    assert (config / "app.env").read_text() == "MODE=restored\n"


def test_a_relative_or_root_config_directory_is_refused(tmp_path):
    tar = make_tar(tmp_path / "c.tar", GOOD)
    for bad in ("relative/dir", "/"):
        with pytest.raises(ConfigSwapError):
            configs.extract_config_tar(tar, bad, run_id())


def test_a_crash_between_the_two_renames_is_repaired(site, tmp_path):
    run = run_id()
    new_dir, _ = configs.extract_config_tar(make_tar(tmp_path / "c.tar", GOOD), site, run)
    os.rename(site, configs.config_copy_path(site, run, ConfigCopyKind.PRE))  # the first rename, then the crash
    actions = configs.reconcile_config_swap(site, run)
    assert len(actions) == 2
    assert (site / "app.env").read_text() == "MODE=old\n" and not new_dir.exists()
    assert sorted(p.name for p in site.parent.iterdir()) == ["app"]
    assert configs.reconcile_config_swap(site, run) == []


def test_a_crash_inside_a_rollback_is_completed(site, tmp_path):
    run = run_id()
    configs.extract_config_tar(make_tar(tmp_path / "c.tar", GOOD), site, run)
    configs.swap_config_dir(site, run)
    os.rename(site, configs.config_copy_path(site, run, ConfigCopyKind.FAILED))  # rollback's first rename
    configs.reconcile_config_swap(site, run)
    assert (site / "app.env").read_text() == "MODE=old\n"
