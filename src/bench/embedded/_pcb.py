"""The embedded generator's circuit board: components, traces and vias, redrawable with moved or missing parts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._draw import _aa, _fine, _grid, _jitter, _lowfreq, _mix, _rect_sdf, _segments_distance, _window
from ._scenes import Scene

IC_PINS = 7  # per long side


def _pin_rows(u: np.ndarray, p: "Part") -> np.ndarray:
    """Fold part-local ``u`` onto one pin pitch, so one rectangle draws a row of IC_PINS pins."""
    pitch = p.w / IC_PINS
    folded = np.mod(u + p.w / 2, pitch) - pitch / 2
    return np.where(np.abs(u) < p.w / 2, folded, np.float32(1.0)).astype(np.float32)


@dataclass(frozen=True)
class Part:
    """A pcb component in board units (fractions of the image size); ``kind`` picks its drawing."""

    kind: str
    x: float
    y: float
    w: float
    h: float
    angle: float = 0.0  # radians, added to the board's rotation

    def moved(self, dx: float, dy: float, dangle: float) -> "Part":
        return Part(self.kind, self.x + dx, self.y + dy, self.w, self.h, self.angle + dangle)


PCB_PARTS = (
    Part("ic", 0.36, 0.38, 0.28, 0.15),
    Part("resistor", 0.74, 0.20, 0.12, 0.04),
    Part("resistor", 0.74, 0.31, 0.12, 0.04),
    Part("resistor", 0.78, 0.70, 0.12, 0.04, np.pi / 2),
    Part("capacitor", 0.24, 0.75, 0.12, 0.12),
    Part("ceramic", 0.55, 0.66, 0.06, 0.035),
    Part("ceramic", 0.55, 0.78, 0.06, 0.035),
    Part("led", 0.86, 0.45, 0.05, 0.05),
)
PCB_TRACES = (
    ((0.30, 0.47), (0.30, 0.60), (0.52, 0.60), (0.52, 0.66)),
    ((0.42, 0.47), (0.42, 0.55), (0.62, 0.55), (0.62, 0.78), (0.58, 0.78)),
    ((0.48, 0.30), (0.48, 0.20), (0.68, 0.20)),
    ((0.46, 0.30), (0.46, 0.24), (0.60, 0.24), (0.60, 0.31), (0.68, 0.31)),
    ((0.80, 0.20), (0.92, 0.20), (0.92, 0.45), (0.88, 0.45)),
    ((0.80, 0.31), (0.86, 0.31), (0.86, 0.42)),
    ((0.24, 0.30), (0.24, 0.12), (0.62, 0.12), (0.62, 0.03)),
    ((0.24, 0.69), (0.12, 0.69), (0.12, 0.20), (0.24, 0.20), (0.24, 0.30)),
    ((0.78, 0.64), (0.78, 0.52), (0.86, 0.52), (0.86, 0.48)),
    ((0.78, 0.76), (0.78, 0.90), (0.40, 0.90), (0.30, 0.80)),
    ((0.05, 0.95), (0.20, 0.95), (0.20, 0.82)),
)
PCB_VIAS = ((0.12, 0.20), (0.62, 0.03), (0.92, 0.20), (0.40, 0.90), (0.05, 0.95), (0.62, 0.55), (0.52, 0.60))


def _pcb(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = _grid(size)
    s = size / 256
    ang = np.deg2rad(rng.uniform(-1.5, 1.5))
    ox, oy = rng.uniform(-0.02, 0.02, 2) * size
    ca, sa = np.cos(ang), np.sin(ang)
    # board coordinates (pixels) of every image pixel: rotate about the centre, then shift
    bx = (xx - size / 2) * ca + (yy - size / 2) * sa + size / 2 - ox
    by = -(xx - size / 2) * sa + (yy - size / 2) * ca + size / 2 - oy

    board_col = _jitter(rng, (0.10, 0.40, 0.21), 0.05)
    copper_col = _jitter(rng, (0.20, 0.55, 0.30), 0.04)
    gold = _jitter(rng, (0.82, 0.68, 0.34), 0.03)
    silver = _jitter(rng, (0.78, 0.78, 0.76), 0.02)
    silk = _jitter(rng, (0.92, 0.93, 0.90), 0.02)
    tex = 1 + 0.05 * _fine(rng, size, 0.8) + 0.04 * _lowfreq(rng, size, 4)
    board = board_col * tex[..., None]

    def board_window(x0: float, y0: float, x1: float, y1: float, pad: float) -> tuple[slice, slice] | None:
        """Image window covering the board rectangle (board pixels), plus ``pad`` pixels."""
        cx = np.array([x0, x1, x0, x1]) - size / 2 + ox
        cy = np.array([y0, y0, y1, y1]) - size / 2 + oy
        ix, iy = cx * ca - cy * sa + size / 2, cx * sa + cy * ca + size / 2
        return _window(size, ix.min() - pad, iy.min() - pad, ix.max() + pad, iy.max() + pad)

    for pts in PCB_TRACES:
        p = np.asarray(pts, np.float32) * size
        win = board_window(*p.min(0), *p.max(0), 4 * s + 2)
        if win is not None:
            cov = _aa(_segments_distance(p, by[win], bx[win]) - 2.2 * s)
            board[win] = _mix(board[win], copper_col * tex[win][..., None], cov)
    for (vx, vy) in PCB_VIAS:
        win = board_window(vx * size, vy * size, vx * size, vy * size, 6 * s + 2)
        if win is not None:
            r = np.hypot(bx[win] - vx * size, by[win] - vy * size)
            board[win] = _mix(board[win], gold[None, None], _aa(r - 4.0 * s))
            board[win] = _mix(board[win], board_col[None, None] * 0.25, _aa(r - 1.8 * s))

    def pads(p: Part) -> list[tuple[float, float, float, float]]:
        """Solder pads of a part, in part-local board units: (x, y, half-w, half-h)."""
        if p.kind == "ic":  # one row per long side; rows are repeated by ``_pin_rows``
            return [(0.0, sgn * (p.h / 2 + 0.025), 0.011, 0.02) for sgn in (-1, 1)]
        if p.kind in ("resistor", "ceramic"):
            return [(sgn * p.w / 2, 0.0, 0.018, p.h / 2 + 0.008) for sgn in (-1, 1)]
        if p.kind == "capacitor":
            return [(sgn * 0.03, p.h / 2 + 0.015, 0.01, 0.01) for sgn in (-1, 1)]
        return [(sgn * p.w / 2, 0.0, 0.01, p.h / 2) for sgn in (-1, 1)]  # led

    def local(p: Part, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        gx, gy = bx[win] - p.x * size, by[win] - p.y * size
        c, sn = np.cos(p.angle), np.sin(p.angle)
        return (gx * c + gy * sn) / size, (-gx * sn + gy * c) / size  # part-local, board units

    def part_window(p: Part) -> tuple[slice, slice] | None:
        reach = (0.5 * np.hypot(p.w, p.h) + 0.06) * size
        # the board→image transform is a small rotation + shift: map the part centre to the image
        px, py = p.x * size - size / 2 + ox, p.y * size - size / 2 + oy
        ix = px * ca - py * sa + size / 2
        iy = px * sa + py * ca + size / 2
        return _window(size, ix - reach, iy - reach, ix + reach, iy + reach)

    def draw_pads(img: np.ndarray, p: Part) -> None:
        win = part_window(p)
        if win is None:
            return
        u, v = local(p, win)
        cov = np.zeros(u.shape, np.float32)
        uu = _pin_rows(u, p) if p.kind == "ic" else u
        for (px, py, hw, hh) in pads(p):
            cov = np.maximum(cov, _aa(_rect_sdf(uu - px, v - py, hw, hh) * size))
        img[win] = _mix(img[win], silver[None, None] * 0.95, cov)

    def draw_part(img: np.ndarray | None, p: Part) -> np.ndarray:
        """Draw ``p`` on ``img`` (in place; None: only compute) and return its full-size coverage."""
        full = np.zeros((size, size), np.float32)
        win = part_window(p)
        if win is None:
            return full
        u, v = local(p, win)
        layers: list[tuple[np.ndarray, np.ndarray]] = []  # (coverage, colour image)
        shape = u.shape + (3,)
        if p.kind == "ic":
            body = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.008) * size)
            pins = np.zeros(u.shape, np.float32)
            uu = _pin_rows(u, p)
            for (px, py, _, _) in pads(p):
                pins = np.maximum(pins, _aa(_rect_sdf(uu - px, v - py * 0.93, 0.006, 0.022) * size))
            layers.append((pins, np.broadcast_to(silver, shape)))
            tone = 0.09 + 0.02 * np.exp(-(((u + p.w * 0.36) ** 2 + (v + p.h * 0.22) ** 2) / 0.0004))
            ic = np.broadcast_to(np.array([1.0, 1.0, 1.05], np.float32), shape) * tone[..., None]
            layers.append((body, ic))
            dot = _aa((np.hypot(u + p.w * 0.38, v + p.h * 0.25) - 0.012) * size)
            layers.append((dot * body, np.broadcast_to(np.float32(0.22), shape)))
        elif p.kind == "resistor":
            caps = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2 * 0.9, 0.006) * size)
            layers.append((caps, np.broadcast_to(silver, shape)))
            body = _aa(_rect_sdf(u, v, p.w * 0.36, p.h / 2, 0.01) * size)
            layers.append((body, np.broadcast_to(np.array([0.72, 0.62, 0.45], np.float32), shape)))
            for k, band in enumerate(((0.55, 0.25, 0.1), (0.1, 0.1, 0.1), (0.75, 0.1, 0.1))):
                bc = _aa(_rect_sdf(u + p.w * (0.2 - 0.13 * k), v, 0.006, p.h / 2) * size) * body
                layers.append((bc, np.broadcast_to(np.array(band, np.float32), shape)))
        elif p.kind == "capacitor":
            r = np.hypot(u, v)
            body = _aa((r - p.w / 2) * size)
            cbody = np.broadcast_to(np.array([0.15, 0.20, 0.45], np.float32), shape) * (
                0.8 + 0.2 * np.clip(1 - r / (p.w / 2), 0, 1))[..., None]
            layers.append((body, cbody))
            stripe = _aa((p.w * 0.22 - u) * size) * body
            layers.append((stripe, np.broadcast_to(np.array([0.70, 0.72, 0.78], np.float32), shape)))
            layers.append((_aa((np.abs(r - p.w * 0.3) - 0.003) * size) * body,
                           np.broadcast_to(np.float32(0.35), shape)))
        elif p.kind == "ceramic":
            caps = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.004) * size)
            layers.append((caps, np.broadcast_to(silver, shape)))
            body = _aa(_rect_sdf(u, v, p.w * 0.32, p.h / 2, 0.003) * size)
            layers.append((body, np.broadcast_to(np.array([0.62, 0.50, 0.36], np.float32), shape)))
        else:  # led
            body = _aa(_rect_sdf(u, v, p.w / 2, p.h / 2, 0.006) * size)
            layers.append((body, np.broadcast_to(np.array([0.92, 0.90, 0.80], np.float32), shape)))
            lens = _aa((np.hypot(u, v) - p.w * 0.3) * size)
            layers.append((lens, np.broadcast_to(np.array([0.95, 0.80, 0.20], np.float32), shape)))
        cov = np.zeros(u.shape, np.float32)
        for c, _ in layers:
            cov = np.maximum(cov, c)
        full[win] = cov
        if img is not None:
            region = img[win]
            for c, colour in layers:
                region = _mix(region, colour * tex[win][..., None], c)
            img[win] = region
        return full

    def silkscreen(img: np.ndarray, p: Part) -> None:
        win = part_window(p)
        if win is None:
            return
        u, v = local(p, win)
        hw, hh = p.w / 2 + 0.04, p.h / 2 + 0.05
        if p.kind == "capacitor":
            ring = np.abs(np.hypot(u, v) - (p.w / 2 + 0.025))
        else:
            ring = np.abs(_rect_sdf(u, v, hw, hh))
        img[win] = _mix(img[win], silk[None, None], _aa((ring - 0.0035) * size) * 0.85)

    base = board.copy()
    for p in PCB_PARTS:
        silkscreen(base, p)
        draw_pads(base, p)

    def redraw(parts: list[Part]) -> np.ndarray:
        img = base.copy()
        for p in parts:
            draw_part(img, p)
        return img

    image = redraw(list(PCB_PARTS))
    full = np.ones((size, size), np.float32)
    scene = Scene(np.clip(image, 0, 1).astype(np.float32), np.ones((size, size), bool), full)
    m = max(2, int(0.06 * size))
    scene.support[:m] = scene.support[-m:] = False
    scene.support[:, :m] = scene.support[:, -m:] = False
    scene.parts = list(PCB_PARTS)
    scene.redraw = redraw
    scene.part_coverage = lambda p: draw_part(None, p)
    return scene
