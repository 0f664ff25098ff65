// Follow the Airflow UI's colour mode (its "theme" setting: light, dark or system). The UI keeps
// it in localStorage under "theme" and puts the resolved mode as a class on its <html>; this page
// is framed by it on the same origin, so it reads either. Without them, the stylesheet follows
// prefers-color-scheme.
(function () {
  function mode() {
    try {
      var parent = window.parent !== window ? window.parent.document.documentElement.classList : null;
      if (parent && parent.contains("dark")) return "dark";
      if (parent && parent.contains("light")) return "light";
    } catch (e) { /* not framed by the Airflow UI */ }
    try {
      var saved = window.localStorage.getItem("theme");
      if (saved === "dark" || saved === "light") return saved;
    } catch (e) { /* storage blocked */ }
    return null;
  }
  function apply() {
    var m = mode();
    if (m) document.documentElement.setAttribute("data-theme", m);
    else document.documentElement.removeAttribute("data-theme");
  }
  apply();
  window.addEventListener("storage", apply);
  try {
    if (window.parent !== window) {
      new MutationObserver(apply).observe(window.parent.document.documentElement, {attributes: true});
    }
  } catch (e) { /* cross-origin parent */ }
})();
