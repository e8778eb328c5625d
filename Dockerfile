# syntax=docker/dockerfile:1
# Multi-stage build: a static binary on a distroless, non-root base.
#   docker build -t gatehouse .
#   docker run -p 80:80 -p 443:443 -p 443:443/udp -v gatehouse-data:/data \
#     -v $PWD/gatehouse.yaml:/etc/gatehouse/gatehouse.yaml:ro gatehouse
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.1.0-dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" \
      -o /out/gatehouse ./cmd/gatehouse \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
# /data holds certificates, the ACME account and the internal CA.
COPY --from=build --chown=nonroot:nonroot /out/data /data
VOLUME ["/data"]
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.yaml
EXPOSE 80/tcp 443/tcp 443/udp
USER nonroot:nonroot
# Ports below 1024 as non-root: the distroless nonroot user cannot bind them
# unless the runtime grants it, so run with `--sysctl net.ipv4.ip_unprivileged_port_start=0`
# (Docker 20.10+ sets this by default) or map high ports in your config.
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run"]
