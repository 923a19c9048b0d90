// A page's tabs chosen in the address (?tab=), so that a link or a reload comes back to the
// same one: the tab shown (the first when the address names none it offers), choosing one,
// and the arrow keys moving between them with the focus (WAI-ARIA tabs).
import { computed, nextTick, type Ref } from "vue";
import { useRoute, useRouter } from "vue-router";

export function useTabs<Tab extends string>(
  tabs: Ref<Tab[]>,
  first: Tab,
): { tab: Ref<Tab>; select: (next: Tab) => Promise<void>; tabKey: (event: KeyboardEvent) => Promise<void> } {
  const route = useRoute();
  const router = useRouter();
  const tab = computed<Tab>(() =>
    tabs.value.includes(route.query.tab as Tab) ? (route.query.tab as Tab) : first,
  );

  async function select(next: Tab): Promise<void> {
    await router.replace({ query: { ...route.query, tab: next } });
  }

  async function tabKey(event: KeyboardEvent): Promise<void> {
    const shown = tabs.value;
    const index = shown.indexOf(tab.value);
    const moves: Record<string, number> = { ArrowRight: 1, ArrowLeft: shown.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    await select(shown[(index + moves[event.key]) % shown.length]);
    await nextTick();
    document.querySelector<HTMLElement>("[role=tab][aria-selected=true]")?.focus();
  }

  return { tab, select, tabKey };
}
