#!/usr/bin/env bash
# An MLflow tracking server behind MLflow's basic-auth app, for the Ray cluster launcher and a
# hand-started cluster (KubeRay sets the same variables from a Secret). The admin account is the
# one in ~/.mlflow/credentials, the file every MLflow client (z2h on each node) reads:
#   [mlflow]
#   mlflow_tracking_username = z2h
#   mlflow_tracking_password = <openssl rand -hex 24>
# Users live in basic_auth.db in the current folder. Arguments go to `mlflow server`, e.g.
#   cluster/templates/mlflow-server.sh --backend-store-uri sqlite:////var/lib/mlflow/mlflow.db \
#       --artifacts-destination /shared/z2h/mlartifacts --host 0.0.0.0 --port 5000
set -euo pipefail
credentials="${MLFLOW_CREDENTIALS:-$HOME/.mlflow/credentials}"
setting() { sed -n "s/^$1[[:space:]]*=[[:space:]]*//p" "$credentials" | head -n 1; }
MLFLOW_AUTH_ADMIN_USERNAME="$(setting mlflow_tracking_username)"
MLFLOW_AUTH_ADMIN_PASSWORD="$(setting mlflow_tracking_password)"
if [ -z "$MLFLOW_AUTH_ADMIN_USERNAME" ] || [ -z "$MLFLOW_AUTH_ADMIN_PASSWORD" ]; then
    echo "mlflow-server.sh: $credentials needs mlflow_tracking_username and mlflow_tracking_password" >&2
    exit 2
fi
# CSRF key of the auth app: one server process, so a fresh key per start is enough.
MLFLOW_FLASK_SERVER_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
exec mlflow server --app-name basic-auth "$@"
