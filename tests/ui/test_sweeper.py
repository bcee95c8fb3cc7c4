"""The sweeper's disk measure must survive folders deleted under it (a closed session's files are removed
by another thread while a request checks the disk budget)."""

import threading

from slm_blocks.ui.sweeper import folder_mb


def test_folder_mb_counts_files_and_skips_symlinks(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x" * 2**20)
    (tmp_path / "g").write_bytes(b"x" * 2**19)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b" / "f")
    assert folder_mb(tmp_path) == 1.5


def test_folder_mb_while_folders_vanish(tmp_path):
    import shutil

    errors = []
    for round_ in range(30):
        root = tmp_path / f"r{round_}"
        for i in range(60):
            (root / f"s{i}" / "runs" / "r").mkdir(parents=True)
            (root / f"s{i}" / "runs" / "r" / "run.json").write_text("{}")
        remover = threading.Thread(target=shutil.rmtree, args=(root,))
        remover.start()
        try:
            while remover.is_alive():
                folder_mb(tmp_path)
        except OSError as e:  # FileNotFoundError from a folder that vanished mid-walk
            errors.append(e)
        remover.join()
    assert not errors, errors[:3]
