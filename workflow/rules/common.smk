# Config validation, method discovery and the helpers every rule file uses.
import ast
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.utils import update_config, validate

os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))
CONFIG_FILES = ", ".join(str(p) for p in (workflow.overwrite_configfiles or ["workflow/config/config.yaml"]))


def source(key):
    """Where a top-level config key came from, for an error message: --config on the command line, or the files."""
    return f"--config {key}=..." if key in workflow.config_settings.config else CONFIG_FILES


def fail(message):
    """A one-line error and exit status 1, before any job runs."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def typed(value):
    """Snakemake reads a --config value's nested entries with YAML's BaseLoader, all as strings ('4', 'true'): read
    each such string as the YAML scalar it spells, as a --configfile would."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        try:
            scalar = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return value if isinstance(scalar, (dict, list)) or scalar is None else scalar
    return value


def check_config():
    """Validate with jsonschema for a precise one-line message, then let Snakemake fill in the defaults."""
    import jsonschema

    schema = yaml.safe_load(Path(workflow.basedir, "workflow/schemas/config.schema.yaml").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        fail(f"{CONFIG_FILES}: config key '{where}': {error.message} (schema: workflow/schemas/config.schema.yaml)")
    validate(config, "../schemas/config.schema.yaml")


update_config(config, typed(workflow.config_settings.config))
check_config()
sys.path.insert(0, workflow.basedir)
from evaluation.tasks import TASKS as KNOWN_TASKS  # noqa: E402
from core.config import canonical, for_task  # noqa: E402
from core.errors import SuiteError  # noqa: E402


import jsonschema  # noqa: E402

METHOD_SCHEMA = jsonschema.Draft202012Validator(
    yaml.safe_load(Path(workflow.basedir, "workflow/schemas/method.schema.yaml").read_text())
)


def discover_methods(root="methods"):
    """Every methods/<name>/method.yaml; its __init__.py must define or import `train` and `generate`."""
    found = {}
    for path in sorted(Path(workflow.basedir, root).glob("*/method.yaml")):
        name = path.parent.name
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            fail(f"{path.parent}: a method directory's name takes lowercase letters, digits and underscores only "
                 f"(a hyphen separates a row's variant: 'quark-worst')")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            fail(f"{path}: not valid YAML ({str(exc).splitlines()[0]})")
        init = path.parent / "__init__.py"
        if not init.is_file():
            fail(f"{init}: missing; a method directory needs a Python module with train() and generate()")
        names = set()
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(a.asname or a.name.split(".")[-1] for a in node.names)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        missing = [e for e in ("train", "generate") if e not in names]
        if missing:
            fail(f"{init}: method '{name}' lacks its entry point(s) {', '.join(missing)}")
        error = jsonschema.exceptions.best_match(METHOD_SCHEMA.iter_errors(spec))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "top level"
            fail(f"{path}: key '{where}': {error.message} (schema: workflow/schemas/method.schema.yaml)")
        found[name] = spec
    return found


METHODS = discover_methods()
# A method whose training is more than one job (ACF's concurrent rounds) ships methods/<name>/rules.smk: its rules
# must write {R}/{task}/<name>/seed{seed}/model.json and train.benchmark.tsv; the generic train rule leaves it alone.
METHOD_RULES = {m: str(Path(workflow.basedir, "methods", m, "rules.smk")) for m in METHODS
                if Path(workflow.basedir, "methods", m, "rules.smk").is_file()}
# A budget row, <method>-x<k>, trains its own model with method.yaml's `budget_keys` (the hyperparameters that set
# how many scored samples training draws) multiplied by k: the budget curve's rows.
BUDGET_VARIANT = re.compile(r"x([1-9][0-9]*)")
for _m, _spec in METHODS.items():
    if _spec.get("budget_keys") and _m in METHOD_RULES:
        fail(f"methods/{_m}/method.yaml: budget_keys need the generic train rule, and {_m} ships rules.smk")
GENERIC_TRAIN = "|".join([m for m in METHODS if m not in METHOD_RULES] +
                         [f"{m}-x[1-9][0-9]*" for m in METHODS if METHODS[m].get("budget_keys")] +
                         [f"{m}-{v}" for m in METHODS if m not in METHOD_RULES
                          for v, spec in (METHODS[m].get("variants") or {}).items() if "hparams" in spec]) or "(?!)"
PROFILE = config["profile"]
BASE_SAMPLES = f"{config['results_dir'].rstrip('/')}/{PROFILE}/{{task}}/_base_samples/seed{{seed}}"
GPUS = int(config["device"].startswith("cuda"))  # the `gpu` resource of every rule that loads a model
R = f"{config['results_dir'].rstrip('/')}/{PROFILE}"
TASKS = config["tasks"]
SEEDS = config["seeds"]

def check_prompts(task):
    """Read the task's prompt files now (they are small), so a bad line fails before any job runs."""
    from evaluation.tasks import EVAL_FRACTION, task_spec, wikitext_prefixes, wikitext_splits
    from core.data import read_prompts, select_prompts
    from core.errors import SuiteError

    d = config["data"][task]
    try:
        if task_spec(task).prompts == "wikitext":
            splits = wikitext_splits(d["train_prompts"], d["eval_prompts"], d.get("eval_fraction", EVAL_FRACTION))
            for articles, path in zip(splits, (d["train_prompts"], d["eval_prompts"])):
                wikitext_prefixes(articles, d.get("prefix_words", 32), d.get("min_continuation_words", 32), path)
            return
        for split in ("train", "eval"):
            path = d[f"{split}_prompts"]
            select_prompts(read_prompts(path), None, 0, d.get(f"{split}_min_prompt_toxicity"),
                           d.get(f"{split}_max_prompt_toxicity"), path)
    except SuiteError as exc:
        fail(str(exc))


def check_names(task):
    """Reward and scorer names must be registered: an unknown one would otherwise fail only in a job, after
    training."""
    from evaluation.scorers import scorer_names
    from methods.common.rewards import reward_names

    reward, judge = config["reward"][task], config["scorers"].get(task)
    judge = judge.get("name") if isinstance(judge, dict) else judge
    if reward.get("name") not in reward_names():
        fail(f"{CONFIG_FILES}: reward.{task}.name: unknown reward '{reward.get('name')}' (known: "
             f"{', '.join(reward_names())})")
    for key, name in (("reward", reward.get("scorer")), ("scorers", judge)):
        if name is not None and name not in scorer_names():
            fail(f"{CONFIG_FILES}: {key}.{task}: unknown scorer '{name}' (known: {', '.join(scorer_names())})")


def check_results_dir():
    """The results directory must be a writable directory or creatable: found now, not in the first job. Nothing is
    created here (a dry run leaves no trace)."""
    where = Path(R)
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        fail(f"{source('results_dir')}: results_dir: {where} is a file, not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        fail(f"{source('results_dir')}: results_dir: {where} is not writable")


def check_typed_sentiment_prompts():
    """A shipped file of typed sentiment prompts (`sentiment_prompts.typed`) must give every prompt its type: found
    now, not when the first evaluation reads it after training."""
    path = config.get("sentiment_prompts", {}).get("typed")
    if not path or not any(KNOWN_TASKS[t].prompts == "sentiment" for t in TASKS):  # tasks checked above
        return
    from core.data import iter_jsonl
    from core.errors import SuiteError

    try:
        untyped = next((n for n, row in iter_jsonl(path) if "sentiment_type" not in row), None)
    except SuiteError as exc:
        fail(f"{source('sentiment_prompts')}: sentiment_prompts.typed: {exc}")
    if untyped:
        fail(f"{path}:{untyped}: no sentiment_type (sentiment_prompts.typed must name a type_sentiment_prompts "
             "output, or be null to type the candidates)")


for task in TASKS:
    if task not in KNOWN_TASKS:
        fail(f"{source('tasks')}: unknown task '{task}' (known: {', '.join(KNOWN_TASKS)})")
    if task not in config["data"]:
        fail(f"{CONFIG_FILES}: no data.{task} section for task '{task}'")
    for key in ("train_prompts", "eval_prompts"):
        if not Path(config["data"][task][key]).is_file():
            fail(f"{CONFIG_FILES}: data.{task}.{key}: prompts file not found: {config['data'][task][key]}")
    if task not in config["reward"]:
        fail(f"{CONFIG_FILES}: no reward.{task} entry for task '{task}'")
    if KNOWN_TASKS[task].needs_scorer and task not in config["scorers"]:
        fail(f"{CONFIG_FILES}: no scorers.{task} entry for task '{task}' (the evaluator's judge)")
    check_names(task)
    check_prompts(task)
check_results_dir()
check_typed_sentiment_prompts()
if config["base_model"].startswith("path:") and not Path(config["base_model"][5:], "config.json").is_file():
    fail(f"{CONFIG_FILES}: base_model: model directory not found (no config.json): {config['base_model'][5:]}")


def train_sampling(task):
    """`train_sampling` (how training jobs sample completions) with the task's own overrides on top."""
    settings = {k: v for k, v in config["train_sampling"].items() if k != "tasks"}
    return {**settings, **(config["train_sampling"].get("tasks", {}).get(task) or {})}


EVAL_DATA_KEYS = ("eval_prompts", "eval_min_prompt_toxicity", "eval_max_prompt_toxicity")


def train_data_settings(task):
    """What a task's training prompts and corpus depend on: its `data` settings less the evaluation ones. Two facts
    about the evaluation prompts stay, because they decide what training must not see: whether they come from the
    training file itself (WikiText: its last articles are held out) and, for sentiment, whether the prompts typed for
    evaluation are drawn from the training file (then the whole candidate draw is left out of training)."""
    from evaluation.tasks import same_file

    d = config["data"][task]
    settings = {k: v for k, v in d.items() if k not in EVAL_DATA_KEYS}
    settings["eval_from_train_file"] = same_file(d["train_prompts"], d["eval_prompts"])
    if KNOWN_TASKS[task].prompts == "sentiment":
        typing = config.get("sentiment_prompts", {})
        candidates = typing.get("candidates", "data/rtp/dev.jsonl")
        settings["excluded_candidates"] = (
            {"file": candidates, "max_candidates": typing.get("max_candidates", 400), "seed": typing.get("seed", 0)}
            if same_file(d["train_prompts"], candidates)
            else None
        )
    return settings


def eval_settings(task):
    """The `eval` section with the task's own overrides (`eval.tasks.<task>`) on top."""
    settings = {k: v for k, v in config["eval"].items() if k != "tasks"}
    return {**settings, **(config["eval"].get("tasks", {}).get(task) or {})}


def scorer_spec(task):
    """`scorers.<task>`: a registered scorer's name, or {name: ..., <its arguments>}; None where none is needed."""
    spec = config["scorers"].get(task)
    return None if spec is None else {"name": spec} if isinstance(spec, str) else dict(spec)


def split_row(row):
    """'quark-worst' -> ('quark', 'worst'); 'quark' -> ('quark', None)."""
    method, _, variant = row.partition("-")
    return method, (variant or None)


def variant_spec(row):
    """What a row's variant changes: method.yaml's `variants` entry (a name, `generate` options), or, for a budget
    row <method>-x<k>, the multiple k of the method's budget ({} for a method's own row)."""
    method, variant = split_row(row)
    if variant is None:
        return {}
    budget = BUDGET_VARIANT.fullmatch(variant)
    if budget and METHODS[method].get("budget_keys"):
        return {"name": f"{METHODS[method]['name']} ({budget[1]}× budget)", "budget": int(budget[1])}
    return (METHODS[method].get("variants") or {})[variant]


def trained_as(row):
    """The training run whose model a row samples from: a budget row's or a training variant's (`hparams`) own, the
    variant named by `from`, or else the method's."""
    spec = variant_spec(row)
    if "budget" in spec or "hparams" in spec:
        return row
    method = split_row(row)[0]
    return f"{method}-{spec['from']}" if "from" in spec else method


def check_rows(rows, source):
    for row in rows:
        method, variant = split_row(row)
        if method not in METHODS:
            fail(f"{source}: unknown method '{method}' (found in methods/: {', '.join(METHODS)})")
        budget = variant and BUDGET_VARIANT.fullmatch(variant) and METHODS[method].get("budget_keys")
        if variant and not budget and variant not in (METHODS[method].get("variants") or {}):
            fail(f"{source}: method '{method}' has no variant '{variant}' in methods/{method}/method.yaml"
                 + (" (nor budget_keys for a budget row)" if BUDGET_VARIANT.fullmatch(variant) else ""))
        parent = variant and not budget and variant_spec(row).get("from")
        if parent and "hparams" not in (METHODS[method]["variants"].get(parent) or {}):
            fail(f"methods/{method}/method.yaml: variant '{variant}' samples from variant '{parent}', "
                 f"which is not a variant with its own hparams")


check_rows(config["methods"], source("methods"))


def rows_for(task):
    return [r for r in config["methods"] if task in METHODS[split_row(r)[0]]["tasks"]]


for task in TASKS:
    if not rows_for(task):
        fail(f"{source('methods')}: no requested method runs task '{task}' (each method's tasks are in "
             f"methods/<name>/method.yaml); add one, or leave '{task}' out of `tasks`")


def check_variant_options():
    """A variant's `generate` options must be keywords its method's generate() takes; checked by signature, before
    any job runs (importing only the methods that have such variants)."""
    import importlib
    import inspect

    for row in config["methods"]:
        method, variant = split_row(row)
        options = variant_spec(row).get("generate") or {}
        if not options:
            continue
        params = inspect.signature(importlib.import_module(f"methods.{method}").generate).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        unknown = sorted(set(options) - set(params))
        if unknown:
            fail(f"methods/{method}/method.yaml: variant '{variant}' passes {', '.join(unknown)} to generate(), "
                 f"which takes only {', '.join(params)}")


check_variant_options()


def hparams(method, task=None, variant=None):
    """method.yaml's hyperparameters for this profile, a training variant's (`variants.<v>.hparams`) over them, then
    the config's `hparams.<method>` on top, each with its `per_task` overrides for this task (core/config.py:
    `for_task`); model.json records what the method receives."""
    levels = [(METHODS[method].get("hparams") or {}).get(PROFILE), ((variant or {}).get("hparams") or {}).get(PROFILE),
              config.get("hparams", {}).get(method)]
    try:
        return for_task(levels, task, f"methods/{method}/method.yaml or the config's hparams.{method}")
    except SuiteError as exc:
        fail(str(exc))


def base_samples_spec(task):
    """The config's `base_samples` for one task (its `per_task` entry on top), checked as methods/common/base_samples.py
    reads it: what the base_samples rule draws."""
    from core.config import from_dict
    from methods.common.base_samples import Spec

    source = f"{CONFIG_FILES}: base_samples"
    try:
        merged = for_task([config["base_samples"]], task, source)
        from_dict(Spec, merged, source)
    except SuiteError as exc:
        fail(str(exc))
    return merged


def base_samples_input(method):
    """The shared base samples as an input of `method`'s jobs that read them (method.yaml: `base_samples: true`)."""
    wanted = METHODS[method].get("base_samples", False)
    return lambda w: {"base_samples": BASE_SAMPLES.format(task=w.task, seed=w.seed) + "/samples.jsonl"} if wanted else {}


if any(METHODS[split_row(row)[0]].get("base_samples") for row in config["methods"] if split_row(row)[0] in METHODS):
    for _task in TASKS:
        base_samples_spec(_task)  # a bad setting fails now, in one line


def run_hparams(run, task):
    """A training run's hyperparameters: its method's (`hparams`) with a training variant's, and a budget row's
    `budget_keys` scaled."""
    method, _ = split_row(run)
    merged = hparams(method, task, variant_spec(run))
    k = variant_spec(run).get("budget")
    for key in METHODS[method].get("budget_keys", []) if k else []:
        if key not in merged:
            fail(f"methods/{method}/method.yaml: budget key '{key}' has no value in the {PROFILE} profile")
        merged[key] = merged[key] * k
    return merged


def display_name(row):
    method, variant = split_row(row)
    if variant:
        return variant_spec(row).get("name", f"{METHODS[method]['name']} ({variant})")
    return METHODS[method]["name"]


# On a cluster (an executor such as SLURM submits the jobs: Snakemake then has no --cores; or this is one of its
# jobs) each job asks for what config `cluster` says; locally, model jobs take every core.
CLUSTER = workflow._cores is None or workflow.remote_exec
# Per-rule requests sized for the mini profile; config cluster.mem_mb and cluster.runtime override them by name.
JOB_MEM_MB = {"train": 12000, "base_samples": 4000, "generate": 6000, "evaluate": 6000, "type_sentiment_prompts": 6000,
              "base_model": 4000, "toxicity_head": 4000, "prepare_corpus": 2000, "dexperts_expert": 8000,
              "dexperts_ensemble": 6000, "acf_sample": 4000, "acf_train_r": 4000, "acf_train_lm": 8000,
              "acf_finish": 4000, "default": 1000}
JOB_RUNTIME = {"train": 480, "base_samples": 60, "dexperts_expert": 240, "acf_train_lm": 120, "acf_train_r": 120, "acf_sample": 120,
               "type_sentiment_prompts": 120, "generate": 120, "evaluate": 120, "default": 60}
MODEL_RULES = {"train", "base_samples", "generate", "evaluate", "type_sentiment_prompts", "prepare_corpus", "dexperts_expert",
               "acf_sample", "acf_train_r", "acf_train_lm"}


def job_cores():
    """The CPUs a model job gets: config cluster.threads on a cluster, --cores locally."""
    return config["cluster"]["threads"] if CLUSTER else workflow.cores


def heavy_threads():
    """Model jobs take every core: one at a time, so the benchmark files time each job alone."""
    return job_cores()


def request(table, rule):
    """A rule's memory or runtime: the config's value by name, else its `default`, else the built-in table's."""
    own = config["cluster"][table]
    builtin = JOB_MEM_MB if table == "mem_mb" else JOB_RUNTIME
    return own.get(rule, own.get("default", builtin.get(rule, builtin["default"])))


def job_resources(rule):
    """Every rule's `resources:`, so that a profile or --set-resources override of one key keeps the others."""
    c = config["cluster"]
    gpu = GPUS if rule in MODEL_RULES else 0
    partition = (c["gpu_partition"] or c["partition"]) if gpu else c["partition"]
    return {"mem_mb": request("mem_mb", rule), "runtime": request("runtime", rule),
            **({"gpu": GPUS} if rule in MODEL_RULES else {}),
            **({"slurm_account": c["account"]} if c["account"] else {}),
            **({"slurm_partition": partition} if partition else {})}


def check_cluster_fit():
    """Before any job is submitted: every rule's request must fit some node of its partition (`sinfo`), or SLURM
    would keep the job PENDING for ever without a word."""
    import shutil
    import subprocess

    if not shutil.which("sinfo"):
        return
    listing = subprocess.run(["sinfo", "-h", "-o", "%P %c %m"], capture_output=True, text=True)
    if listing.returncode != 0:
        fail(f"sinfo failed ({listing.stderr.strip() or listing.returncode}): is this a SLURM submit host?")
    nodes = {}  # partition -> [(cpus, mem_mb)]; the default partition also under None
    for line in listing.stdout.split("\n"):
        if line.strip():
            part, cpus, mem = line.split()
            size = (int(cpus.rstrip("+")), int(mem.rstrip("+")))
            nodes.setdefault(part.rstrip("*"), []).append(size)
            if part.endswith("*"):
                nodes.setdefault(None, []).append(size)
    for rule in workflow.rules:
        if rule.name in workflow._localrules or rule.name == "all":
            continue
        res = job_resources(rule.name)
        cores = rule.resources["_cores"]
        threads = job_cores() if cores.is_evaluable() else cores.value  # a function of wildcards: job_cores() at most
        part = res.get("slurm_partition")
        if not any(threads <= c and res["mem_mb"] <= m for c, m in nodes.get(part, [])):
            sizes = ", ".join(f"{c} CPUs/{m} MB" for c, m in sorted(set(nodes.get(part, [])))) or "none"
            fail(f"{CONFIG_FILES}: rule '{rule.name}' asks {threads} CPUs and {res['mem_mb']} MB, which no node of "
                 f"partition '{part or 'default'}' has (nodes: {sizes}); lower cluster.threads or "
                 f"cluster.mem_mb.{rule.name} in a --configfile")


wildcard_constraints:
    task="[a-z][a-z0-9_-]*",
    method="[a-z][a-z0-9_]*",
    row="[a-z][a-z0-9_]*(-[a-z0-9_]+)*",
    seed="[0-9]+",
