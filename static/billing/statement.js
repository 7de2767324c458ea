// The statement's Print link; a static file, not an inline handler, so the Content-Security-Policy allows it.
document.querySelectorAll("[data-print]").forEach((link) => {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    window.print();
  });
});
