import { createApp } from "vue";
import { createRouter, createWebHistory } from "vue-router";
import App from "./App.vue";
import { t } from "./i18n";
import { startLive } from "./live";
import { type Role, loggedIn, SCOPED_VIEWS, session } from "./session";
import { allowed, views } from "./views";
import LoginView from "./views/LoginView.vue";
import "./style.css";

const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: "/login", name: "login", component: LoginView, meta: { title: "login.title", bare: true } },
    ...views.map((view) => ({
      path: view.path,
      name: view.name,
      component: view.component,
      meta: { title: view.title, role: view.role, clusterWide: view.clusterWide, bare: view.bare },
    })),
    { path: "/:rest(.*)*", redirect: "/" },
  ],
});

router.beforeEach((to) => {
  if (to.name !== "login" && !loggedIn.value) {
    return { name: "login", query: to.fullPath !== "/" ? { next: to.fullPath } : {} };
  }
  if (to.name !== "login" && session.current?.role === null && !SCOPED_VIEWS.has(String(to.name)))
    return { name: "vms" };
  const role = to.meta.role as Role | undefined;
  if (role && !allowed({ role, clusterWide: to.meta.clusterWide === true })) return { name: session.current?.role === null ? "vms" : "overview" };
  return true;
});

router.afterEach((to) => {
  document.title = `${t(String(to.meta.title ?? "app.name"))} · Heron`;
});

if (loggedIn.value) startLive();
createApp(App).use(router).mount("#app");
