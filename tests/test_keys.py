from relaygate.keys import mask_key, mask_secrets


def test_mask_key() -> None:
    key = "sk-" + "A" * 45 + "xyz"
    assert mask_key(key) == "sk-AAA…xyz"
    assert mask_key(None) == "<none>"
    assert mask_key("short") == "sho…"


def test_mask_secrets_hides_given_and_key_shaped_strings() -> None:
    text = "admin rg-admin-0123456789abcdef and sk-abcdefghijklmnop and fk-1234567890abc"
    masked = mask_secrets(text, "rg-admin-0123456789abcdef")
    assert "0123456789abcdef" not in masked
    assert "abcdefghijklmnop" not in masked
    assert "1234567890abc" not in masked
