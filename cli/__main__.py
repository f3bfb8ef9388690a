"""``python -m cli ...`` runs the ``kv`` command; ``kv cluster up`` spawns nodes this way."""

from cli.main import app

if __name__ == "__main__":
    app(prog_name="kv")
