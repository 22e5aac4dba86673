// Sort a table by the column whose header is clicked: numbers (a cell's data-v) best first, then the reverse.
for (const th of document.querySelectorAll("table.sortable th")) {
  th.title = "click to sort";
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const key = (row) => {
      const cell = row.cells[th.cellIndex];
      const number = parseFloat(cell.dataset.v);
      return Number.isNaN(number) ? cell.textContent.trim() : number;
    };
    const descending = th.getAttribute("aria-sort") !== "descending";
    for (const other of th.parentElement.children) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    body.append(...rows);
  });
}
