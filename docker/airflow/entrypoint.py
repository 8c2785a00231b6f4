"""The Airflow image's entry point: `entrypoint.py <airflow command...>` (api-server, scheduler,
dag-processor, `db migrate`, ...), run as `python -m airflow <command...>` after two things Airflow
needs from the operator's .env rather than the image:

- the UI login: Airflow's simple auth manager reads users from AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS
  (FINEGRAIN_AIRFLOW_USER with role admin) and their passwords from a JSON file, written here (mode
  0600, in AIRFLOW_HOME) from AIRFLOW_ADMIN_PASSWORD; without it the api-server refuses to start,
  rather than starting with a generated password nobody sees;
- the secrets every component must share (AIRFLOW__API_AUTH__JWT_SECRET, AIRFLOW__CORE__FERNET_KEY)
  are checked to be set, for the same reason: Airflow would otherwise make up one per process and the
  components would not accept each other's tokens.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REQUIRED = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")


def main(arguments: list[str]) -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"error: {', '.join(missing)} not set: put them in the deployment's .env (docs/deploy.md)",
              file=sys.stderr)
        return 2
    home = Path(os.environ.get("AIRFLOW_HOME", "/var/lib/finegrain/airflow"))
    user = os.environ.get("FINEGRAIN_AIRFLOW_USER", "admin")
    passwords = home / "passwords.json"
    os.environ.setdefault("AIRFLOW__CORE__AUTH_MANAGER",
                          "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    os.environ.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{user}:admin")
    os.environ.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    if arguments[:1] == ["api-server"]:
        password = os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")
        if not password:
            print("error: AIRFLOW_ADMIN_PASSWORD not set: put it in the deployment's .env (docs/deploy.md)",
                  file=sys.stderr)
            return 2
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps({user: password}) + "\n")
    os.execvp(sys.executable, [sys.executable, "-m", "airflow", *arguments])
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
