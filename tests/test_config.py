"""Config: YAML + dotted overrides, type-checked, errors naming the key, saved and re-read."""

from pathlib import Path

import pytest

from workbench.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
ORGANISM = ROOT / "configs" / "organism"


@pytest.mark.parametrize("method", ["rloo", "tlmre", "attnpo", "attnpo_pos", "attnpo_neg", "oracle"])
def test_every_organism_config_loads_with_its_method(method):
    cfg = load_config(ORGANISM / f"{method}.yaml")
    assert cfg.method.name == method and cfg.model.name == "organism" and cfg.data.task == "organism"
    if method.startswith("attnpo"):
        assert cfg.kfh.path is not None


def test_hf_config_loads():
    cfg = load_config(ROOT / "configs" / "hf" / "smollm2.yaml")
    assert cfg.model.name == "smollm2" and cfg.data.verifier == "math" and cfg.data.segmenter == "r1"
    assert (ROOT / cfg.data.train_file).is_file() and (ROOT / cfg.data.eval_file).is_file()


def test_dotted_overrides_are_typed():
    cfg = load_config(ORGANISM / "attnpo.yaml", ["train.lr=1e-4", "method.name=tlmre", "rollout.group_size=4",
                                                 "kfh.heads=[L3H1,L2H4]", "kfh.path=null", "train.threads=1",
                                                 "logging.progress=false", "data.prompt_suffix=<think>"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.method.name == "tlmre" and cfg.rollout.group_size == 4 and cfg.train.threads == 1
    assert cfg.kfh.heads == ["L3H1", "L2H4"] and cfg.kfh.path is None
    assert cfg.logging.progress is False and cfg.data.prompt_suffix == "<think>"


def test_defaults_without_a_file():
    cfg = load_config(None, ["method.name=rloo"])
    assert cfg.method.name == "rloo" and cfg.method.alpha == 0.2 and cfg.method.delay_horizon == 1000
    assert cfg.train.clip_ratio == 0.2 and cfg.train.clip_ratio_c == 3.0 and cfg.train.kl_coef == 0.0


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", r"unknown config key 'train\.lrr'.*known keys in train: steps, lr"),
    ("trainer.lr=1", r"unknown config key 'trainer'"),
    ("train.steps=abc", r"train\.steps: expected int, got 'abc'"),
    ("train.steps=2.5", r"train\.steps: expected int, got 2\.5"),
    ("train.lr=fast", r"train\.lr: expected float, got 'fast'"),
    ("logging.progress=3", r"logging\.progress: expected bool, got 3"),
    ("rollout.group_size=true", r"rollout\.group_size: expected int, got True"),
    ("kfh.heads=L3H1", r"kfh\.heads: expected a list"),
    ("kfh.heads=[L3H1,3]", r"kfh\.heads\[1\]: expected str, got 3"),
    ("method.name=ppo_magic", r"method\.name: unknown method 'ppo_magic'"),
    ("data.task=maths", r"data\.task: unknown task 'maths'; known: organism.*jsonl"),
    ("rollout.temperature=0", r"rollout\.temperature: must be above 0"),
    ("rollout.top_p=1.5", r"rollout\.top_p: must be in \(0, 1\]"),
    ("train.steps=0", r"train\.steps: must be at least 1"),
    ("train.lr", r"not of the form section\.key=value"),
    ("train.lr.x=1", r"train\.lr is not a section"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ORGANISM / "tlmre.yaml", [override])


def test_kfh_methods_need_exactly_one_head_source():
    with pytest.raises(ConfigError, match="kfh: method 'attnpo' needs exactly one of kfh.path"):
        load_config(ORGANISM / "attnpo.yaml", ["kfh.path=null"])
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(ORGANISM / "attnpo.yaml", ["kfh.heads=[L1H1]"])
    with pytest.raises(ConfigError, match=r"kfh\.heads\[0\]: bad head name 'X1'"):
        load_config(ORGANISM / "attnpo.yaml", ["kfh.path=null", "kfh.heads=[X1]"])
    load_config(ORGANISM / "tlmre.yaml")  # the baselines need no heads


def test_oracle_needs_a_task_with_step_labels():
    with pytest.raises(ConfigError, match="oracle uses the task's true step labels; task 'jsonl' has none "
                                          r"\(tasks with step labels: organism"):
        load_config(ROOT / "configs" / "hf" / "smollm2.yaml", ["method.name=oracle"])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'train\.warmup'"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ORGANISM / "attnpo.yaml", ["train.lr=2e-4", "kfh.path=null", "kfh.heads=[L3H1]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, Config)


def test_organism_verifier_needs_organism_prompts():
    with pytest.raises(ConfigError, match="data.verifier: the organism verifier reads organism prompts"):
        load_config(ROOT / "configs" / "hf" / "smollm2.yaml", ["data.verifier=organism"])


def test_organism_trainer_arguments_use_the_same_loader(capsys):
    from workbench.config import load_dataclass
    from workbench.organism.__main__ import main
    from workbench.organism.train import OrganismTrainConfig

    cfg = load_dataclass(OrganismTrainConfig, overrides=["steps=20", "max_minutes=5", "init_from=some/checkpoint"])
    assert cfg.steps == 20 and cfg.max_minutes == 5.0 and isinstance(cfg.max_minutes, float)
    assert cfg.init_from == "some/checkpoint" and OrganismTrainConfig().init_from is None
    with pytest.raises(ConfigError, match="steps: expected int, got 'many'"):
        load_dataclass(OrganismTrainConfig, overrides=["steps=many"])
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "stepz=3"])
    assert exit_info.value.code == 2 and "unknown config key 'stepz'" in capsys.readouterr().err


def test_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "run.yaml").write_text("data:\n  task: jsonl\n  train_file: prompts.jsonl\n  eval_file: ../eval.jsonl\n"
                                  "kfh:\n  path: kfh.json\nmethod:\n  name: attnpo\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(sub / "run.yaml")
    assert cfg.data.train_file == str(sub / "prompts.jsonl") and cfg.kfh.path == str(sub / "kfh.json")
    assert cfg.data.eval_file == str(tmp_path / "eval.jsonl")
    over = load_config(sub / "run.yaml", ["kfh.path=mine.json"])  # typed in the shell: relative to the cwd
    assert over.kfh.path == str(elsewhere / "mine.json")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg  # stored absolute: a run directory resumes anywhere
    shipped = load_config(ORGANISM / "attnpo.yaml")
    assert Path(shipped.kfh.path) == ORGANISM / "kfh.json" and Path(shipped.kfh.path).is_file()
    hf = load_config(ROOT / "configs" / "hf" / "smollm2.yaml")
    assert Path(hf.data.train_file).is_file() and Path(hf.kfh.path) == ROOT / "runs" / "discover-smollm2" / "kfh.json"


def test_an_old_run_directory_still_resumes(tmp_path, monkeypatch):
    """Run directories written before data.task and absolute paths: data.source, cwd-relative kfh.path."""
    old = tmp_path / "run" / "config.yaml"
    old.parent.mkdir()
    old.write_text("data:\n  source: organism\n  verifier: organism\n  segmenter: organism\n"
                   "kfh:\n  path: configs/organism/kfh.json\n  heads: null\nmethod:\n  name: attnpo\n")
    monkeypatch.chdir(ROOT)
    cfg = load_config(old, base=Path.cwd())  # what `--resume` does
    assert cfg.data.task == "organism" and Path(cfg.kfh.path) == ORGANISM / "kfh.json"


def test_an_organism_recipe_names_its_organism_and_its_warm_start_relative_to_itself(tmp_path, monkeypatch):
    from workbench.organism import get_organism
    from workbench.organism.__main__ import train_config

    monkeypatch.chdir(tmp_path)  # not the repository root
    recipe = get_organism("organism-hard").recipe
    for cfg in (train_config("organism-hard", None, []), train_config(None, recipe, [])):
        assert cfg.organism == "organism-hard"
        assert Path(cfg.init_from) == (ROOT / "workbench" / "organism" / "checkpoint").resolve()
    assert train_config("organism", recipe, []).organism == "organism"  # the flag wins over the file
    assert train_config(None, None, ["steps=3"]).organism == "organism"
