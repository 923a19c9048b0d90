import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

// The build goes where the API serves it from; it is git-ignored (never a second source).
export default defineConfig({
  plugins: [vue()],
  base: "/",
  build: {
    outDir: "../src/heron/api/web/dist", // relative to this directory (the root)
    emptyOutDir: true,
    target: "es2020",
    chunkSizeWarningLimit: 1024,
  },
  server: {
    // `npx vite` during development: the API of a local herond answers /api.
    proxy: { "/api": { target: "http://127.0.0.1:8443", ws: true } },
  },
});
