# Zero to NanoChat in a container: JupyterLab and the server, both usable as root inside it.
#   docker build -t nanochat .
#   docker run -p 8000:8000 nanochat                     the server (make serve) on http://localhost:8000/
#   docker run -p 8888:8888 nanochat make lab-root       JupyterLab on http://localhost:8888/
# The notebooks' artifacts are not in the image: run `make course` inside (or mount checkpoints/ from a
# machine that has them: -v "$PWD/checkpoints:/course/checkpoints").
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git chromium \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /course
COPY . .
RUN make setup
EXPOSE 8000 8888
CMD ["make", "serve", "HOST=0.0.0.0"]
