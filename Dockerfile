# Serve's executables on Debian 12. docker-compose.yml runs one container per service from it.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config libnats-dev libuv1-dev node-llhttp \
      libflatbuffers-dev flatbuffers-compiler libhiredis-dev libspdlog-dev libfmt-dev \
      libcurl4-openssl-dev libssl-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev \
      libarchive-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSERVE_BUILD_TESTS=OFF \
    && cmake --build build

FROM debian:12-slim
# libcurl4 and libarchive13 are opened at first use (command runtimes, packaged working
# directories), so `ldd serve-replica` does not list them; they are needed all the same.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libnats3.4 libuv1 libflatbuffers2 libhiredis0.14 libspdlog1.10 libfmt9 libcurl4 \
      libyaml-cpp0.7 libarchive13 libssl3 ca-certificates python3 python3-sklearn \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/serve serve
COPY --from=build /src/build/bin/ /usr/local/bin/
COPY --from=build /src/sdk /opt/serve/sdk
# examples/counter/serve.yaml names ../../build/examples/libcounter.so.
COPY --from=build /src/build/examples/libcounter.so /opt/serve/build/examples/
COPY examples /opt/serve/examples
USER serve
WORKDIR /var/lib/serve
ENV SERVE_ADDRESS=nats://nats:4222
