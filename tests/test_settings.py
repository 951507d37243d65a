import pytest

from assistant import settings as settings_mod
from assistant.errors import ConfigError


def test_defaults_then_file_then_env_then_flags(home):
    (home / "config.toml").write_text('[generation]\ntemperature = 0.3\ntop_p = 0.5\n[chat]\npack = "chef"\n')
    s = settings_mod.load(env={"ASSISTANT_GENERATION_TOP_P": "0.8"}, overrides={"chat.pack": "doctor"})
    assert s.generation.temperature == 0.3  # file
    assert s.generation.top_p == 0.8  # env beats file
    assert s.chat.pack == "doctor"  # flag beats file
    assert s.generation.max_new_tokens == 256  # default


def test_unknown_key_names_key_file_and_line(home):
    cfg = home / "config.toml"
    cfg.write_text('[generation]\ntemperature = 0.3\ntemprature = 0.1\n')
    with pytest.raises(ConfigError) as err:
        settings_mod.load(env={})
    msg = str(err.value)
    assert "temprature" in msg and str(cfg) in msg and "line 3" in msg


def test_bad_value_and_bad_toml(home):
    cfg = home / "config.toml"
    cfg.write_text("[generation]\ntop_p = 3\n")
    with pytest.raises(ConfigError, match="top_p"):
        settings_mod.load(env={})
    cfg.write_text("[generation\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings_mod.load(env={})


def test_unknown_environment_variable_is_an_error(home):
    with pytest.raises(ConfigError, match="ASSISTANT_GENERATION_TEMP"):
        settings_mod.load(env={"ASSISTANT_GENERATION_TEMP": "1"})
    with pytest.raises(ConfigError, match="expected a number"):
        settings_mod.load(env={"ASSISTANT_GENERATION_TEMPERATURE": "warm"})


def test_paths_follow_assistant_home(home):
    from assistant import paths

    assert paths.home() == home.resolve()
    assert paths.journal_file("alice").is_relative_to(home.resolve())
    with pytest.raises(ConfigError):
        paths.user_dir("../etc")


def test_round_trip_to_toml(home):
    s = settings_mod.load(env={})
    (home / "config.toml").write_text(settings_mod.to_toml(s))
    assert settings_mod.load(env={}) == s


def test_generation_precedence_defaults_pack_user_flags(home):
    from assistant.core import Assistant

    (home / "config.toml").write_text("[generation]\ntemperature = 0\n")
    assistant = Assistant(settings_mod.load(env={}))
    chef = assistant.pack("chef")
    params = assistant.params(chef)
    assert params.temperature == 0  # the user's config beats the pack's default
    assert params.max_new_tokens == chef.generation["max_new_tokens"]  # the pack beats the built-in default
    assert assistant.params(chef, temperature=0.9).temperature == 0.9  # a flag beats everything


def test_the_users_explicit_value_beats_the_packs_even_when_it_equals_the_default(home):
    """temperature = 0.7 in config.toml is the user's choice, not "unset": it beats the doctor pack's 0.5."""
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    (home / "config.toml").write_text("[generation]\ntemperature = 0.7\n")
    a = Assistant(settings_mod.load())
    pack = a.pack("doctor")
    assert pack.generation.get("temperature") == 0.5
    assert a.params(pack).temperature == 0.7
    # without the user's setting, the pack's default applies; a flag beats both
    assert Assistant(settings_mod.load(env={}, config_path=home / "none.toml")).params(pack).temperature == 0.5
    assert a.params(pack, temperature=0.2).temperature == 0.2
