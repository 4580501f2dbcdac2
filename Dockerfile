# The project image used by docker-compose.yml for Airflow (and anything else that runs mmretrieval code).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git libsndfile1 && rm -rf /var/lib/apt/lists/*
# the workspace is bind-mounted from the host (another owner): let git (DVC's SCM) read it
RUN git config --system --add safe.directory '*'
WORKDIR /opt/mmretrieval
COPY requirements.txt constraints.txt pyproject.toml README.md ./
RUN pip install --no-cache-dir -c constraints.txt -r requirements.txt psycopg2-binary
COPY mmretrieval ./mmretrieval
COPY dags ./dags
COPY plugins ./plugins
COPY params.yaml dvc.yaml ./
RUN pip install --no-cache-dir --no-deps -e .
# the image has no .git: the commit it was built from is every model's code version (tracking.git_sha)
ARG MMR_CODE_VERSION=unknown
ENV MMR_CODE_VERSION=${MMR_CODE_VERSION}
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=False
