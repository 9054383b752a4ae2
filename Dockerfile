# Production image: the API, the worker and beat run from it with different commands.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY robosystems ./robosystems
RUN pip install --no-cache-dir --no-deps -e .
RUN useradd --create-home --uid 10001 robosystems && mkdir -p /data && chown robosystems /data
USER robosystems
ENV ROBOSYSTEMS_DATA_DIR=/data HOST=0.0.0.0 PORT=8000
EXPOSE 8000
CMD ["robosystems", "serve"]
