"""The sync commands of the CLI, end to end on a real repository and HTTP server."""

from __future__ import annotations

from edgewise.cli import main
from edgewise.sync.devserver import RepoServer


def test_keys_publish_serve_sync_rollout(tmp_path, capsys, repo):
    keys, repository = tmp_path / "cli-keys", tmp_path / "cli-repo"
    assert main(["keys", str(keys)]) == 0
    bundle = repo.bundles["1.0.0"]
    assert main(["publish", str(bundle), "--repo", str(repository), "--keys", str(keys), "--rollout", "100"]) == 0
    out = capsys.readouterr().out
    assert "initialised repository" in out and "published digits 1.0.0 on stable at 100 %" in out
    with RepoServer(repository) as server:
        store = tmp_path / "device"
        common = ["--repo", server.url, "--store", str(store)]
        assert main(["sync", "digits", *common, "--trusted-root", str(repository / "trusted_root.json")]) == 0
        assert "digits: installed 1.0.0 (previous None)" in capsys.readouterr().out
        assert main(["sync", "digits", *common, "--check"]) == 0
        assert "1.0.0 is already installed" in capsys.readouterr().out
        assert main(["publish", str(repo.bundles["1.1.0"]), "--repo", str(repository), "--keys", str(keys),
                     "--rollout", "0"]) == 0
        assert main(["sync", "digits", *common]) == 0
        assert "no update (rollout is at 0 %" in capsys.readouterr().out
        assert main(["rollout", "digits", "100", "--repo", str(repository), "--keys", str(keys)]) == 0
        assert main(["sync", "digits", *common]) == 0
        assert "installed 1.1.0 (previous 1.0.0)" in capsys.readouterr().out
        assert main(["sync", "digits", *common, "--rollback"]) == 0
        assert "rolled back to 1.0.0" in capsys.readouterr().out


def test_sync_errors_are_one_line_exit_2(tmp_path, capsys):
    code = main(["sync", "digits", "--repo", "http://127.0.0.1:9", "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "no trusted root metadata" in err and "hint:" in err
