import os

import pytest

from monitor.privacy import load_author_key, pseudonymise


def test_pseudonym_is_stable_keyed_and_not_the_name():
    a = pseudonymise("jane_doe", b"k1")
    assert a == pseudonymise(" jane_doe ", b"k1") and len(a) == 32
    assert a != pseudonymise("jane_doe", b"k2") and "jane" not in a
    with pytest.raises(ValueError):
        pseudonymise("jane_doe", b"")


def test_key_file_is_created_once_private(tmp_path):
    path = tmp_path / "sub" / "author.key"
    first = load_author_key(None, path)
    assert len(first) == 32 and load_author_key(None, path) == first
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_author_key("configured", path) == b"configured"
