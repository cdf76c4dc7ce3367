// The shop's page: every section reads the replica (at once, offline too)
// and re-renders when a key under it changes, in this tab, another tab or
// on the server. Device-owned keys are written here; the backend writes
// sys/ (orders, followers, timeline) and the shared catalog.
import type { Replica, SharedPartition, SyncStatus, Value } from "@dalvdb/client";
import { isList, mergeJSON, openReplica } from "@dalvdb/client";

const people = ["alice", "bob", "carol"];
const maxSearches = 20;

const words: Record<string, Record<string, string>> = {
  en: {},
  fr: {
    theme: "Thème",
    language: "Langue",
    catalog: "Catalogue",
    search: "Chercher",
    recent: "Recherches récentes",
    categories: "Catégories",
    products: "Produits",
    cart: "Panier",
    cartEmpty: "Votre panier est vide.",
    checkoutPending: "Commande demandée : la boutique va la passer.",
    checkout: "Commander",
    orders: "Commandes",
    profile: "Profil",
    save: "Enregistrer",
    saved: "Favoris",
    people: "Personnes",
    followers: "Abonnés",
    timeline: "Fil",
    post: "Publier",
    offline: "Hors ligne : vos changements sont gardés sur cet appareil et envoyés à votre retour. Les commandes, abonnés et le fil se mettront à jour une fois en ligne.",
    add: "Ajouter",
    follow: "Suivre",
    unfollow: "Ne plus suivre",
  },
};

interface Category {
  name: string;
  parent?: string;
}
interface Product {
  name: string;
  price: number;
  cat: string;
}
interface Order {
  id: string;
  items: { product: string; qty: number }[] | null;
  placed: string;
}
interface Post {
  author?: string;
  text: string;
  at: number;
}
type Profile = Record<string, string>;

const text = new TextDecoder();
const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`no #${id} on the page`);
  return e as T;
};

/** items returns the list at key as strings; [] where absent. */
function items(v: Value | undefined): string[] {
  return isList(v) ? v.list.map((b) => text.decode(b)) : [];
}

/** el makes an element with text and attributes. */
function el(tag: string, txt = "", attrs: Record<string, string> = {}): HTMLElement {
  const e = document.createElement(tag);
  e.textContent = txt;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function newID(prefix: string): string {
  return `${prefix}${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

class Shop {
  private scheduled = false;

  constructor(
    private readonly r: Replica,
    private readonly cat: SharedPartition,
    private readonly user: string,
  ) {}

  get lang(): string {
    return this.r.getJSON<string>("prefs/language") ?? "en";
  }

  t(key: string, fallback: string): string {
    return words[this.lang]?.[key] ?? fallback;
  }

  start(): void {
    $("who").textContent = this.user;
    this.r.subscribe("", () => this.schedule());
    this.cat.subscribe("", () => this.schedule());
    this.r.onStatus((s) => this.status(s));
    this.status(this.r.status);
    this.wire();
    this.render();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.render();
    });
  }

  private status(s: SyncStatus): void {
    const b = $("status");
    b.textContent = s.online ? (s.pending > 0 ? `online · ${s.pending} to send` : "online") : s.pending > 0 ? `offline · ${s.pending} to send` : "offline";
    b.className = s.online ? "badge" : "badge offline";
    $("offline-note").hidden = s.online;
  }

  /** wire connects the page's controls to writes. */
  private wire(): void {
    const r = this.r;
    $<HTMLSelectElement>("theme").onchange = (e) => {
      const theme = (e.target as HTMLSelectElement).value;
      document.documentElement.dataset["theme"] = theme; // at once, before the write lands
      void r.putJSON("prefs/theme", theme);
    };
    $<HTMLSelectElement>("language").onchange = (e) => void r.putJSON("prefs/language", (e.target as HTMLSelectElement).value);
    $("search-form").onsubmit = (e) => {
      e.preventDefault();
      const input = $<HTMLInputElement>("search");
      const term = input.value.trim();
      this.render();
      if (term === "") return;
      // The history keeps the last maxSearches terms, a term searched again
      // moving to the end: one transaction, so every device agrees.
      void r.update((tx) => {
        tx.listRemove("search/history", term);
        tx.listAdd("search/history", term);
        const h = items(tx.get("search/history"));
        for (const old of h.slice(0, Math.max(0, h.length - maxSearches))) tx.listRemove("search/history", old);
      });
    };
    $("search").oninput = () => this.render();
    $("checkout").onclick = () => {
      if (items(r.get("cart/items")).length > 0) void r.listAdd("checkout/requests", newID("o-"));
    };
    $<HTMLFormElement>("profile").onsubmit = (e) => {
      e.preventDefault();
      // Only the fields changed here are written, so that edits of other
      // fields on another device merge (mergeJSON) instead of conflicting.
      const cur = r.getJSON<Profile>("profile") ?? {};
      const next: Profile = { ...cur };
      for (const f of ["name", "city", "bio"]) {
        const v = ($<HTMLFormElement>("profile").elements.namedItem(f) as HTMLInputElement).value;
        if (v !== (cur[f] ?? "")) next[f] = v;
      }
      void r.putJSON("profile", next);
    };
    $<HTMLFormElement>("post").onsubmit = (e) => {
      e.preventDefault();
      const ta = $<HTMLTextAreaElement>("post-text");
      const body = ta.value.trim();
      if (body === "") return;
      ta.value = "";
      void r.putJSON(`posts/${newID("p-")}`, { text: body, at: Date.now() } satisfies Post);
    };
    document.body.addEventListener("click", (e) => {
      const b = (e.target as HTMLElement).closest("button");
      if (!b) return;
      const d = b.dataset;
      if (d["add"]) void this.addToCart(d["add"], 1);
      if (d["more"]) void this.addToCart(d["more"], 1);
      if (d["less"]) void this.addToCart(d["less"], -1);
      if (d["remove"]) void this.removeFromCart(d["remove"]);
      if (d["save"]) void (items(r.get("saved")).includes(d["save"]) ? r.listRemove("saved", d["save"]) : r.listAdd("saved", d["save"]));
      if (d["follow"]) void (items(r.get("following")).includes(d["follow"]) ? r.listRemove("following", d["follow"]) : r.listAdd("following", d["follow"]));
      if (d["term"]) {
        $<HTMLInputElement>("search").value = d["term"];
        this.render();
      }
    });
  }

  private addToCart(id: string, by: number): Promise<void> {
    return this.r.update((tx) => {
      const n = (tx.getJSON<number>(`cart/qty/${id}`) ?? 0) + by;
      if (n <= 0) {
        tx.listRemove("cart/items", id);
        tx.delete(`cart/qty/${id}`);
        return;
      }
      tx.listAdd("cart/items", id);
      tx.putJSON(`cart/qty/${id}`, n);
    });
  }

  private removeFromCart(id: string): Promise<void> {
    return this.r.update((tx) => {
      tx.listRemove("cart/items", id);
      tx.delete(`cart/qty/${id}`);
    });
  }

  private product(id: string): Product | undefined {
    return this.cat.getJSON<Product>(`product/${id}`);
  }

  render(): void {
    const r = this.r;
    document.documentElement.dataset["theme"] = r.getJSON<string>("prefs/theme") ?? "light";
    document.documentElement.lang = this.lang;
    $<HTMLSelectElement>("theme").value = r.getJSON<string>("prefs/theme") ?? "light";
    $<HTMLSelectElement>("language").value = this.lang;
    for (const e of document.querySelectorAll<HTMLElement>("[data-t]")) {
      const k = e.dataset["t"] ?? "";
      e.dataset["en"] ??= e.textContent ?? "";
      e.textContent = this.t(k, e.dataset["en"]);
    }
    this.renderCatalog();
    this.renderCart();
    this.renderOrders();
    this.renderProfile();
    const saved = $("saved");
    saved.replaceChildren(...items(r.get("saved")).map((id) => el("li", this.product(id)?.name ?? id, { "data-id": id })));
    const following = items(r.get("following"));
    $("people").replaceChildren(
      ...people
        .filter((p) => p !== this.user)
        .map((p) => {
          const li = el("li", "", { "data-id": p });
          const on = following.includes(p);
          li.append(el("span", p, { class: "grow" }), el("button", on ? this.t("unfollow", "Unfollow") : this.t("follow", "Follow"), { "data-follow": p, "aria-pressed": String(on) }));
          return li;
        }),
    );
    $("followers").replaceChildren(...items(r.get("sys/followers")).map((f) => el("li", f, { "data-id": f })));
    const posts = r
      .list("sys/timeline/")
      .map((it) => r.getJSON<Post>(it.key))
      .filter((p): p is Post => p !== undefined)
      .sort((a, b) => b.at - a.at);
    $("timeline").replaceChildren(...posts.map((p) => el("li", `${p.author ?? "?"}: ${p.text}`)));
  }

  private renderCatalog(): void {
    const cats = new Map(this.cat.list("cat/").map((it) => [it.key.slice(4), this.cat.getJSON<Category>(it.key)] as const));
    const tree = (parent: string | undefined): HTMLElement => {
      const ul = el("ul");
      for (const [id, c] of cats) {
        if (!c || c.parent !== parent) continue;
        const li = el("li", "", { "data-id": id });
        const wrap = el("div");
        wrap.append(el("span", c.name));
        const sub = tree(id);
        if (sub.childElementCount > 0) wrap.append(sub);
        li.append(wrap);
        ul.append(li);
      }
      return ul;
    };
    $("categories").replaceChildren(...tree(undefined).children);
    const q = $<HTMLInputElement>("search").value.trim().toLowerCase();
    const saved = items(this.r.get("saved"));
    const cards = this.cat
      .list("product/")
      .map((it) => [it.key.slice(8), this.cat.getJSON<Product>(it.key)] as const)
      .filter(([, p]) => p && (q === "" || p.name.toLowerCase().includes(q)))
      .map(([id, p]) => {
        const card = el("div", "", { class: "product", "data-id": id });
        const on = saved.includes(id);
        card.append(
          el("div", p?.name ?? id, { class: "name" }),
          el("div", `${(p?.price ?? 0).toFixed(2)} € · ${cats.get(p?.cat ?? "")?.name ?? ""}`, { class: "muted" }),
          el("button", this.t("add", "Add to cart"), { "data-add": id }),
          el("button", on ? "♥" : "♡", { class: "heart", "data-save": id, "aria-pressed": String(on), title: "save" }),
        );
        return card;
      });
    $("products").replaceChildren(...cards);
    $("searches").replaceChildren(
      ...items(this.r.get("search/history"))
        .reverse()
        .map((s) => {
          const li = el("li");
          li.append(el("button", s, { "data-term": s }));
          return li;
        }),
    );
  }

  private renderCart(): void {
    const r = this.r;
    const ids = items(r.get("cart/items"));
    $("cart").replaceChildren(
      ...ids.map((id) => {
        const li = el("li", "", { "data-id": id });
        const qty = r.getJSON<number>(`cart/qty/${id}`) ?? 1;
        li.append(
          el("span", this.product(id)?.name ?? id, { class: "grow" }),
          el("button", "−", { "data-less": id }),
          el("span", `× ${qty}`, { class: "qty" }),
          el("button", "+", { "data-more": id }),
          el("button", "✕", { "data-remove": id, title: "remove" }),
        );
        return li;
      }),
    );
    $("cart-empty").hidden = ids.length > 0;
    $("checkout-pending").hidden = items(r.get("checkout/requests")).length === 0;
    ($("checkout") as HTMLButtonElement).disabled = ids.length === 0;
  }

  private renderOrders(): void {
    const r = this.r;
    const orders = r
      .list("sys/orders/")
      .map((it) => r.getJSON<Order>(it.key))
      .filter((o): o is Order => o !== undefined)
      .sort((a, b) => (a.placed < b.placed ? 1 : -1));
    $("orders").replaceChildren(
      ...orders.map((o) =>
        el("li", `${new Date(o.placed).toLocaleString(this.lang)}: ${(o.items ?? []).map((i) => `${this.product(i.product)?.name ?? i.product} × ${i.qty}`).join(", ")}`, { "data-id": o.id }),
      ),
    );
  }

  private renderProfile(): void {
    const p = this.r.getJSON<Profile>("profile") ?? {};
    const form = $<HTMLFormElement>("profile");
    for (const f of ["name", "city", "bio"]) {
      const input = form.elements.namedItem(f) as HTMLInputElement;
      // A field being edited keeps what the user typed.
      if (document.activeElement !== input) input.value = p[f] ?? "";
    }
  }
}

const user = new URLSearchParams(location.search).get("user") ?? "alice";
const r = await openReplica({
  name: `shop-${user}`,
  serverUrl: location.origin,
  token: async () => {
    const res = await fetch(`/token?user=${encodeURIComponent(user)}`);
    if (!res.ok) throw new Error(`token: ${res.status} ${await res.text()}`);
    return res.text();
  },
  resolver: mergeJSON,
  shared: ["catalog"],
});
const shop = new Shop(r, r.shared("catalog"), user);
shop.start();
(window as unknown as { shop: { r: Replica } }).shop = { r };
document.body.dataset["ready"] = "true";
