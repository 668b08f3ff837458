# syntax=docker/dockerfile:1
# Multi-stage image: build with dev dependencies, run with production ones only.
# Not built on this project's CI machines (no container engine there); see README.

FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY gen ./gen
RUN npm run build

FROM node:22-bookworm-slim AS runtime
ENV NODE_ENV=production \
    TOKEN_SERVICE_ADDR=0.0.0.0:50051 \
    DATABASE_URL=sqlite:/var/lib/token-service/token-service.db
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
RUN mkdir -p /var/lib/token-service && chown node:node /var/lib/token-service
USER node
EXPOSE 50051
VOLUME ["/var/lib/token-service"]
# Liveness without extra binaries: Node itself opens a TCP connection to the gRPC port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const s=require('net').connect(+(process.env.TOKEN_SERVICE_ADDR.split(':').pop()),'127.0.0.1');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1));setTimeout(()=>process.exit(1),2500)"]
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["serve"]
