"""Import uploads: the Share tab's own .zip unpacks flat into the session folder; pickles, unreadable or
oversized zips and clashing names are refused with a message naming Import."""

import zipfile

import pytest

from slm_blocks.ui.card_view import card_preview
from slm_blocks.ui.import_upload import gather_import_files
from slm_blocks.ui.uploads import UserError


def make_zip(path, members: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_export_zip_and_loose_files(tmp_path):
    z = make_zip(tmp_path / "run-hf.zip", {"config.json": "{}", "model.safetensors": b"\0" * 10,
                                           "sub/../../tokenizer.json": "{}", "folder/": ""})
    loose = tmp_path / "generation_config.json"
    loose.write_text("{}")
    out = tmp_path / "import"
    written = gather_import_files([str(z), loose], out, max_bytes=2**20)  # paths as text or Path
    assert sorted(p.name for p in written) == ["config.json", "generation_config.json", "model.safetensors",
                                               "tokenizer.json"]
    assert all(p.parent == out for p in written)  # flat, never outside the folder
    assert (out / "model.safetensors").read_bytes() == b"\0" * 10


@pytest.mark.parametrize("members, words", [
    ({"pytorch_model.bin": b"x"}, "pickle"),
    ({"a/config.json": "{}", "b/config.json": "{}"}, "same name"),
    ({"model.safetensors": b"\0" * (2 * 2**20)}, "unpacks to more than 1 MB"),
])
def test_refused_zips(tmp_path, members, words):
    z = make_zip(tmp_path / "x.zip", members)
    with pytest.raises(UserError, match="Import") as e:
        gather_import_files([str(z)], tmp_path / "import", max_bytes=2**20)
    assert words in str(e.value)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "model.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable zip"):
        gather_import_files([str(bad)], tmp_path / "import", max_bytes=2**20)


def test_card_preview_metadata_table_and_inline_image(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\ntags:\n- slm-blocks\n- text-generation\n"
                                        "---\n\n# run\n\n![loss curve](loss.png)\n")
    (tmp_path / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    md = card_preview(tmp_path)
    assert "| library_name | transformers |" in md and "| tags | slm-blocks, text-generation |" in md
    assert "---\nlibrary_name" not in md
    assert "![loss curve](data:image/png;base64," in md and "(loss.png)" not in md
