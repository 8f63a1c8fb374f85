# Serve's executables on Debian 12, with Debian's nats-server and redis-server: docker-compose.yml
# runs every container from this image.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config libnats-dev libuv1-dev node-llhttp \
      libflatbuffers-dev flatbuffers-compiler libhiredis-dev libspdlog-dev libfmt-dev \
      libcurl4-openssl-dev libssl-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev \
      libarchive-dev prometheus-cpp-dev python3-dev pybind11-dev \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSERVE_BUILD_TESTS=OFF \
    && cmake --build build

FROM debian:12-slim
# apt-get clean: a base image made with debootstrap keeps every downloaded .deb (250 MB here),
# where Docker's debian images are configured not to.
# libcurl4, libarchive13 and libpython3.11 are opened at first use (command runtimes, packaged
# working directories, python runtimes through lib/serve/libserve-python.so), so
# `ldd serve-replica` does not list them; they are needed all the same.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libnats3.4 libuv1 libflatbuffers2 libhiredis0.14 libspdlog1.10 libfmt9 libcurl4 \
      libyaml-cpp0.7 libarchive13 libssl3 libprometheus-cpp-core1.0 ca-certificates python3 \
      libpython3.11 \
      python3-sklearn \
      nats-server redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 serve \
    && useradd --system --uid 10001 --gid serve --create-home --home-dir /var/lib/serve serve \
    && install -d -o serve -g serve /var/lib/serve/redis
COPY --from=build /src/build/bin/ /usr/local/bin/
# The python runtime's embedding and the `serve` package, where serve-replica looks: ../lib/serve.
COPY --from=build /src/build/lib/serve/ /usr/local/lib/serve/
COPY --from=build /src/sdk /opt/serve/sdk
# examples/counter/serve.yaml names ../../build/examples/libcounter.so.
COPY --from=build /src/build/examples/libcounter.so /opt/serve/build/examples/
COPY examples /opt/serve/examples
# docker-compose.yml runs nats-server (Debian's) from this image with the role table's config.
COPY deploy/nats/nats-server.conf /opt/serve/deploy/nats/nats-server.conf
# By number, so Kubernetes' runAsNonRoot can check it (deploy/kubernetes/).
USER 10001:10001
WORKDIR /var/lib/serve
ENV SERVE_ADDRESS=nats://nats:4222
