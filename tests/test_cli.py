import json
import subprocess
import sys

from recsim_env.cli import main


def test_generate_logs_writes_a_readable_log_set(tmp_path, capsys):
    assert main(["generate-logs", "--users", "20", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert "click_rate" in capsys.readouterr().out
    from simulators.logs import read_logs

    assert len(read_logs(tmp_path).users) == 20


def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recsim_env.cli", "train-sim", "--logs", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "not a log directory" in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "recsim_env.cli", "--debug", "train-sim", "--logs",
                            str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_train_sim_cli_writes_checkpoint_and_json(tiny_logs_dir, tmp_path):
    out = tmp_path / "ck"
    assert main(["train-sim", "--logs", str(tiny_logs_dir), "--out", str(out), "--size", "tiny", "--max-steps", "4",
                 "--eval-every", "2", "--batch-size", "2", "--context-length", "128", "--json",
                 str(tmp_path / "t.json")]) == 0
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["steps"] == 4 and summary["best_val_loss"] > 0
    assert (out / "model.safetensors").exists() and (out / "training" / "tb").is_dir()
