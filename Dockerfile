# syntax=docker/dockerfile:1
# Multi-stage image: build with dev dependencies, run with production ones only, as a non-root user.
# Not built on this project's CI machines (they run no container engine); see docs/deploying.md.

FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY gen ./gen
RUN npm run build

# The demo identity provider for docker-compose.yml (oidc-provider is a dev dependency).
FROM build AS demo-provider
COPY test/helpers ./test/helpers
COPY examples/demo-provider ./examples/demo-provider
USER node
EXPOSE 9443 9444
CMD ["node", "--import", "tsx", "examples/demo-provider/main.ts"]

FROM node:22-bookworm-slim AS runtime
ENV NODE_ENV=production \
    TOKEN_SERVICE_ADDR=0.0.0.0:50051 \
    TOKEN_SERVICE_HTTP_ADDR=0.0.0.0:50052 \
    TOKEN_SERVICE_ADMIN_ADDR=0.0.0.0:9464 \
    DATABASE_URL=sqlite:/var/lib/token-service/token-service.db
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
RUN mkdir -p /var/lib/token-service && chown node:node /var/lib/token-service
USER node
# 50051: gRPC. 50052: Connect and gRPC-Web (HTTP). 9464: /metrics, /healthz, /readyz.
EXPOSE 50051 50052 9464
VOLUME ["/var/lib/token-service"]
# Liveness with Node itself (no curl in the image). Readiness, which follows the database, is /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.TOKEN_SERVICE_ADMIN_ADDR||'').split(':').pop()+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "--max-old-space-size=160", "--max-semi-space-size=16", "--no-allocation-site-pretenuring", "dist/src/main.js"]
CMD ["serve"]
