// paperlab: search results quote the page's text, not the buttons above it.
// Sphinx's searchtools.js summarises each hit from the page's [role=main] element, which in
// sphinx-book-theme starts with the header buttons ("System Settings Light Dark") and a print-only
// table of contents; drop those, and collapse the whitespace the summary would otherwise be made of.
// Loaded with `defer` on the search page only: it runs after searchtools.js, before the search starts.
(() => {
  if (typeof Search === "undefined") return;
  const htmlToText = Search.htmlToText;
  Search.htmlToText = (htmlString, anchor) => {
    const page = new DOMParser().parseFromString(htmlString, "text/html");
    page.querySelectorAll(".bd-header-article, .bd-sidebar-secondary, .onlyprint").forEach((el) => el.remove());
    return htmlToText(page.documentElement.outerHTML, anchor).replace(/\s+/g, " ");
  };
})();
