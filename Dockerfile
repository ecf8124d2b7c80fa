# Build stage: the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo reads every target the manifest declares before it builds one, so the bench's
# source must be present even though only the binary is built.
COPY benches benches
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --bin switchyard

# Runtime stage: glibc and the binary, nothing else; runs as a non-root user.
# TLS roots are compiled in (webpki roots), so no CA bundle is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
ENV SWITCHYARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nonroot
ENTRYPOINT ["/usr/local/bin/switchyard"]
