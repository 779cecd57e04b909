import json
import subprocess
import sys

from tests.conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "evaluation", *args], cwd=ROOT, capture_output=True, text=True)


def test_score_adds_a_score_to_every_object(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "have a lovely day", "id": 1}\n{"text": "you are a fucking idiot", "id": 2}\n')
    out = tmp_path / "out.jsonl"
    result = run("score", "--scorer", "profanity_check", "--input", str(src), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[1]["score"] > 0.5 > rows[0]["score"]


def test_score_rejects_a_line_without_text_in_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    result = run("score", "--scorer", "profanity_check", "--input", str(src), "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {src}:2: no 'text' string"


def test_score_with_an_unknown_scorer_lists_every_known_one(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n')
    result = run("score", "--scorer", "nope", "--input", str(src), "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    known = result.stderr.split("(known: ")[1].rstrip(")\n").split(", ")
    assert known == ["hf_classifier", "minilm_toxicity", "perspective", "profanity_check", "vader"]
