// Where the resource tree is: on wide screens a panel beside the menu, open or closed as the
// user left it (remembered in localStorage); on phones a drawer opened from the menu, closed
// again by any navigation.
import { computed, ref, watch } from "vue";

const KEY = "heron.tree.panel";
const narrow = window.matchMedia("(max-width: 800px)");

export const phone = ref(narrow.matches);
narrow.addEventListener("change", (event) => (phone.value = event.matches));

export const pinned = ref(localStorage.getItem(KEY) !== "closed");
watch(pinned, (open) => localStorage.setItem(KEY, open ? "open" : "closed"));

export const drawer = ref(false);

export const treeShown = computed(() => (phone.value ? drawer.value : pinned.value));

export function toggleTree(): void {
  if (phone.value) drawer.value = !drawer.value;
  else pinned.value = !pinned.value;
}

export function closeTree(): void {
  if (phone.value) drawer.value = false;
  else pinned.value = false;
}
