"""The fixed order in which per-sequence gradients are summed (llmkit/model/sequence_grads.py
makes them): a perfect binary tree over the sequences' positions in the step's global batch,
a node being its left half plus its right half, a half without sequences adding nothing.

Its leaves are single sequences, or aligned runs of PRODUCT_RUN sequences for the gradients
made by matrix products (one product over the run's tokens is faster than one per sequence).
In one process a stack of blocks is a binary counter over positions: a block merges with its
left sibling as soon as both are whole, so the micro-batch size never shows. Across processes
(each holding consecutive positions) every rank's blocks are gathered and pushed in position
order, which merges them exactly as one process would have. An embedding's gradient is sparse:
entries (position, row, values), summed row by row in the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmkit.model import cpu_gemm

# A Linear layer's weight gradient is one matrix product per aligned run of this many
# sequences (over their 4*T tokens): the tree starts above it. Per-sequence products (K = T) ran
# the backward pass 17% slower than one product per micro-batch, runs of 4 within 6% of it
# (4 x 256 GPT-2 shape, 16 x 256 tokens). A power of two; each process's share of a step must
# be a multiple of it.
PRODUCT_RUN = 4



@dataclass
class Block:
    """The sum of the gradients of leaves start..start+size-1 (size a power of two, start a
    multiple of it; a leaf is a sequence, or a run of PRODUCT_RUN for a key made by products)."""

    start: int
    size: int
    values: torch.Tensor


def _siblings(left: Block, right: Block) -> bool:
    return left.size == right.size and left.start % (2 * left.size) == 0 and right.start == left.start + left.size


def _push(stack: list[Block], block: Block) -> None:
    """Append, then merge the last two while they are the two halves of one aligned block: a
    binary counter over positions, so a block is always the sum of its two halves."""
    stack.append(block)
    while len(stack) >= 2 and _siblings(stack[-2], stack[-1]):
        right, left = stack.pop(), stack.pop()
        stack.append(Block(left.start, 2 * left.size, left.values.add_(right.values)))


def _collapse(stack: list[Block]) -> torch.Tensor:
    """The blocks left at the end (the binary digits of the sequence count), added right to left:
    the tree's upper nodes, whose right halves hold fewer sequences. Sums in place, into the left."""
    total = stack[-1].values
    for block in reversed(stack[:-1]):
        total = block.values.add_(total)
    return total


def _halves_summed(values: torch.Tensor) -> torch.Tensor:
    """The tree over an aligned run of 2^j sequences (values [2^j, ...]), a level at a time."""
    while values.shape[0] > 1:
        values = values[0::2] + values[1::2]
    return values[0]


def block_layout(start: int, count: int) -> list[tuple[int, int]]:
    """(start, size) of the blocks a stack holds after positions start..start+count-1."""
    stack: list[tuple[int, int]] = []
    for position in range(start, start + count):
        stack.append((position, 1))
        while len(stack) >= 2 and stack[-2][1] == stack[-1][1] and stack[-2][0] % (2 * stack[-1][1]) == 0:
            size = stack.pop()[1]
            stack[-1] = (stack[-1][0], 2 * size)
    return stack


def merge_ranks(layouts: list[list[tuple[int, int]]], parts: list[list[torch.Tensor]]) -> list[Block]:
    """The stack one process would hold, from each rank's blocks (in rank order, each rank's
    layout from block_layout): pushed in position order, halves merge exactly as they would have."""
    stack: list[Block] = []
    for layout, values in zip(layouts, parts):
        for (start, size), value in zip(layout, values):
            _push(stack, Block(start, size, value))
    return stack


@dataclass
class RowEntries:
    """A sparse gradient (an embedding's): per (sequence position, row) the sum of that sequence's tokens' gradients."""

    positions: list[torch.Tensor] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.positions), torch.cat(self.rows), torch.cat(self.values)


def rows_tree(positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, shape: torch.Size, levels: int) -> torch.Tensor:
    """The dense gradient [V, ...] from sparse per-sequence entries: for every row, the same tree
    over positions as the dense parameters', its halves without that row left out (they would add
    zeros, which change nothing), computed a level at a time over all rows at once."""
    # Sorted by (row, position); the values stay where they are, and each level moves only the
    # index arrays and the pairs it adds (left half += right half).
    where = torch.argsort(rows * (int(positions.max()) + 1) + positions)
    rows, blocks = rows[where], positions[where]
    for _ in range(levels):
        parent = blocks >> 1
        pairs = ((rows[1:] == rows[:-1]) & (parent[1:] == parent[:-1])).nonzero().squeeze(1)
        if len(pairs):
            left, right = where[pairs], where[pairs + 1]
            values[left] = values[left] + values[right]
            keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
            keep[pairs + 1] = False
            rows, parent, where = rows[keep], parent[keep], where[keep]
        blocks = parent
    return values.new_zeros(shape).index_copy_(0, rows, values[where])


@dataclass
class SequenceTree:
    """Per parameter and role ("linear", "embedding", ...: a tied weight has two), the
    per-sequence gradients of this step so far: dense blocks, or sparse row entries."""

    stacks: dict[tuple[int, str], list[Block]] = field(default_factory=dict)
    entries: dict[tuple[int, str], RowEntries] = field(default_factory=dict)
    units: dict[tuple[int, str], int] = field(default_factory=dict)  # sequences per leaf (1 unless a product run)
    pending: dict[tuple[int, str], tuple[torch.Tensor, int, list, list]] = field(default_factory=dict)  # runs not yet whole
    open_runs: dict[tuple[int, str], tuple[int, torch.Tensor]] = field(default_factory=dict)  # accumulators of runs

    def push(self, param: torch.Tensor, role: str, first: int, per_sequence: torch.Tensor) -> None:
        """Add the gradients of sequences first, first+1, ... (per_sequence[i], in the parameter's dtype)."""
        stack = self.stacks.setdefault((id(param), role), [])
        count = per_sequence.shape[0]
        for start, size in block_layout(first, count):
            values = _halves_summed(per_sequence[start - first : start - first + size])
            if size == 1 and count > 1:  # a view into the batch's buffer: its own memory, so the buffer can go
                values = values.clone()
            _push(stack, Block(start, size, values))

    def push_product(self, param: torch.Tensor, role: str, first: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """Add the gradient left^T @ right of sequences first, first+1, ... (left [n, T, O] and
        right [n, T, I], contiguous): one product per run of PRODUCT_RUN sequences, its leaf of
        the tree; a run that other micro-batches complete waits here (copied) until it is whole."""
        key = (id(param), role)
        self.units[key] = PRODUCT_RUN
        done = 0
        while done < left.shape[0]:
            position = first + done
            run, offset = divmod(position, PRODUCT_RUN)
            whole = (left.shape[0] - done) // PRODUCT_RUN if offset == 0 else 0
            if whole:  # every whole run here in one batched product: each run's the bits it has alone
                take = whole * PRODUCT_RUN
                self._push_runs(param, role, run, left[done : done + take], right[done : done + take])
                done += take
                continue
            take = min(left.shape[0] - done, PRODUCT_RUN - offset)
            parts = left[done : done + take], right[done : done + take]
            done += take
            _, waiting_run, lefts, rights = self.pending.setdefault(key, (param, run, [], []))
            if waiting_run != run:
                raise RuntimeError("per-sequence gradients arrived out of position order")
            lefts.append(parts[0].clone())
            rights.append(parts[1].clone())
            if offset + take == PRODUCT_RUN:
                self._flush(key)

    def _push_runs(self, param: torch.Tensor, role: str, run: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """The leaves of runs run, run+1, ... (left [k * PRODUCT_RUN, T, O], right [..., I]): one
        product per run, batched (bit for bit one call per run's, measured; a training step's CPU
        time moved by under 1%), added up the tree as `push` adds sequences."""
        runs = max(1, left.shape[0] // PRODUCT_RUN)  # (the step's last run may be short)
        left, right = left.reshape(runs, -1, left.shape[-1]).transpose(1, 2), right.reshape(runs, -1, right.shape[-1])
        if cpu_gemm.takes(left[0], right[0]):  # oneDNN's products, one per run (they take no batch)
            if left.shape[1] > right.shape[2]:
                # oneDNN copies its transposed left operand into rows first: the smaller one goes
                # there, and the product comes out transposed (the same bits, tested: each element
                # is the same sum in the same order). It stays so, a column-major view, up the tree
                # (adds keep the layout; gradients() lays the sum out once): stacking transposed
                # views copied 4x slower than rows (a 1,024 x 256 weight: 13 against 0.8 CPU-ms)
                values = torch.stack([cpu_gemm.matmul(b.t(), a.t()) for a, b in zip(left, right)]).transpose(1, 2)
            else:
                values = torch.stack([cpu_gemm.matmul(a, b) for a, b in zip(left, right)])
        else:
            values = torch.bmm(left, right)
        if values.dtype != param.dtype:  # autocast's low precision: the product in it, the sums in the parameter's
            values = values.to(param.dtype)
        self.push(param, role, run, values)

    def _flush(self, key) -> None:
        param, run, lefts, rights = self.pending.pop(key)
        self._push_runs(param, key[1], run, torch.cat(lefts), torch.cat(rights))

    def run_accumulator(self, param: torch.Tensor, role: str, position: int,
                        transposed: bool = False) -> tuple[torch.Tensor, bool]:
        """For gradients added product by product (the fused head's chunks): the buffer that
        `position`'s run of PRODUCT_RUN sequences accumulates into, in position order, and
        whether it is new (to be written, not added to). end_sequence closes it. `transposed`: a
        matrix laid out column-major (the view of a contiguous [I, O]), for products made
        transposed (fused_loss: oneDNN then copies the smaller operand)."""
        key = (id(param), role)
        self.units[key] = PRODUCT_RUN
        run, offset = divmod(position, PRODUCT_RUN)
        if offset == 0:
            buffer = param.new_empty(param.shape[::-1]).t() if transposed and param.dim() == 2 else torch.empty_like(param)
            self.open_runs[key] = (run, buffer)
            return self.open_runs[key][1], True
        if key not in self.open_runs or self.open_runs[key][0] != run:
            raise RuntimeError("per-sequence gradients arrived out of position order")
        return self.open_runs[key][1], False

    def end_sequence(self, param: torch.Tensor, role: str, position: int) -> None:
        if position % PRODUCT_RUN == PRODUCT_RUN - 1:
            self._close_run((id(param), role))

    def _close_run(self, key) -> None:
        run, value = self.open_runs.pop(key)
        _push(self.stacks.setdefault(key, []), Block(run, 1, value))

    def push_rows(self, param: torch.Tensor, role: str, positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Add sparse gradients: values[i] is sequence positions[i]'s gradient of row rows[i]."""
        entries = self.entries.setdefault((id(param), role), RowEntries())
        entries.positions.append(positions)
        entries.rows.append(rows)
        entries.values.append(values)

    def roles(self, param: torch.Tensor) -> list[str]:
        return sorted(role for key, role in (*self.stacks, *self.entries) if key == id(param))

    def gradients(self, params: list[torch.Tensor], *, sequences: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor | None]:
        """Each parameter's summed gradient (its roles added in name order), then the tree is
        empty. `sequences`: this rank's count this step. With several processes (collective), rank
        r held positions r*sequences onwards: every rank's blocks and entries are gathered and
        merged in the tree one process would build."""
        for key in list(self.pending):  # the step's last run, short of PRODUCT_RUN sequences
            self._flush(key)
        for key in list(self.open_runs):
            self._close_run(key)
        keys = [(p, role) for p in params for role in self.roles(p)]
        dense = [(p, role) for p, role in keys if (id(p), role) in self.stacks]
        sparse = {(id(p), role): self.entries[(id(p), role)].cat() for p, role in keys if (id(p), role) in self.entries}
        if world_size > 1:
            self._gather_dense(dense, rank, world_size, sequences)
            sparse = {key: _gather_rows(*parts) for key, parts in sparse.items()}
        levels = max(0, (world_size * sequences - 1).bit_length())
        sums: dict[int, torch.Tensor] = {}
        for p, role in keys:
            key = (id(p), role)
            total = _collapse(self.stacks[key]) if key in self.stacks else rows_tree(*sparse[key], p.shape, levels)
            if id(p) in sums:  # a tied weight's second role
                sums[id(p)].add_(total)
            else:
                sums[id(p)] = total
        for key, total in sums.items():  # (a run accumulated transposed: the gradient in the parameter's layout)
            if not total.is_contiguous():
                sums[key] = total.contiguous()
        self.stacks.clear()
        self.entries.clear()
        self.units.clear()
        return [sums.get(id(p)) for p in params]

    def _gather_dense(self, keys, rank: int, world_size: int, per_rank: int) -> None:
        import torch.distributed as dist

        if not keys:
            return
        if per_rank % PRODUCT_RUN:
            raise RuntimeError(f"each process's share of a step ({per_rank} sequences) must be a multiple of {PRODUCT_RUN}")
        layouts = {unit: [block_layout(r * per_rank // unit, per_rank // unit) for r in range(world_size)]
                   for unit in {1, PRODUCT_RUN}}
        depth = max(len(layout) for unit in layouts for layout in layouts[unit])
        sizes = [p.numel() for p, _ in keys]
        mine = torch.zeros(depth, sum(sizes), dtype=keys[0][0].dtype)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            stack = self.stacks[(id(p), role)]
            if [(b.start, b.size) for b in stack] != layouts[self.units.get((id(p), role), 1)][rank]:
                raise RuntimeError(f"per-sequence gradients of {tuple(p.shape)} ({role}) cover other positions than this rank's")
            for i, block in enumerate(stack):
                mine[i, offset : offset + size] = block.values.reshape(-1)
            offset += size
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine)
        offset = 0
        for (p, role), size in zip(keys, sizes):
            unit_layouts = layouts[self.units.get((id(p), role), 1)]
            parts = [[theirs[i, offset : offset + size].view(p.shape) for i in range(len(layout))]
                     for layout, theirs in zip(unit_layouts, everyone)]
            self.stacks[(id(p), role)] = merge_ranks(unit_layouts, parts)
            offset += size


def _gather_rows(positions: torch.Tensor, rows: torch.Tensor, values: torch.Tensor):
    """Every rank's sparse entries, concatenated (the tree sorts them by row and position)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)]))
    most = int(max(counts).item())
    index = torch.stack([positions, rows]).new_zeros(2, most)
    index[:, : len(rows)] = torch.stack([positions, rows])
    padded = values.new_zeros((most, *values.shape[1:]))
    padded[: len(rows)] = values
    indices, gathered = [torch.empty_like(index) for _ in range(world)], [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(indices, index)
    dist.all_gather(gathered, padded)
    n = [int(c) for c in counts]
    return (torch.cat([i[0, :k] for i, k in zip(indices, n)]), torch.cat([i[1, :k] for i, k in zip(indices, n)]),
            torch.cat([g[:k] for g, k in zip(gathered, n)]))
