// Reverse-mode autodiff on a tape. Every differentiable op appends a `Node` to the graph's tape
// with a backward closure holding exactly the tensors it needs. `backward(loss)` walks the tape in
// reverse, and frees each node's saved tensors and incoming gradient as soon as it has run.
// A node never holds its own output, so an activation nobody saved is freed when the caller
// drops it. `noGrad` records nothing (evaluation, zero-shot scoring).
// Not here: higher-order gradients, in-place ops on recorded values.

import Foundation

/// A learnable tensor with a persistent gradient. Owned by a module; shared with the optimiser.
public final class Parameter {
    /// Owner path in the accountant (`cell0/edge3/sep_conv_3x3/dw1.weight`).
    public let name: String
    public let value: Tensor
    /// Allocated by `ensureGrad()` (the optimiser allocates every gradient up front).
    public private(set) var grad: Tensor?
    /// Weight decay is applied by optimisers only where this is true (not to BN affine, by choice of the module).
    public var decay: Bool
    /// Frozen parameters get no gradient.
    public var requiresGrad = true

    public init(name: String, value: Tensor, decay: Bool = true) {
        self.name = name
        self.value = value
        self.decay = decay
    }

    public var shape: [Int] { value.shape }
    public var count: Int { value.count }

    /// Allocates the gradient (zeroed) if it does not exist yet.
    @discardableResult
    public func ensureGrad() throws -> Tensor {
        if let g = grad { return g }
        let g = try Tensor.zeros(value.shape, category: .gradients, accountant: value.accountant, owner: value.storage.owner)
        grad = g
        return g
    }

    public func zeroGrad() { grad?.fill(0) }
}

/// The forms of its output gradient an op's backward can read besides a written tensor
/// (`Graph.record(_:inputs:reads:backward:)`), so that its consumer need not write one out.
public struct GradientForms: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// dOut times `BackwardContext.outputScale`, multiplied as it is read (a mixing weight).
    public static let scaled = GradientForms(rawValue: 1)
    /// A batch norm's input gradient, made plane by plane from its dY and x̂ where it is read
    /// (`BackwardContext.batchNormGradient`); dOut is then not read.
    public static let batchNormInput = GradientForms(rawValue: 2)
    /// Per channel, Σ dOut and Σ dOut·out over the samples and the plane, both with the pending
    /// factor applied, handed over with the gradient by its consumer, which read dOut and the
    /// output anyway (a weighted sum's backward): `BackwardContext.outputChannelSums`. A batch
    /// norm without affine map takes its backward's sums from them instead of a pass of its own.
    public static let channelSums = GradientForms(rawValue: 4)
}

/// A batch norm's input gradient not yet written (see `Kernels.BatchNormGradientSource`): it keeps
/// the tensors its planes are made from.
public final class PendingBatchNormGradient {
    let dY: Tensor, xhat: Tensor, coefficients: Tensor
    let dYScale: Float
    let n: Int, c: Int, hw: Int

    init(dY: Tensor, xhat: Tensor, coefficients: Tensor, dYScale: Float, n: Int, c: Int, hw: Int) {
        self.dY = dY; self.xhat = xhat; self.coefficients = coefficients; self.dYScale = dYScale
        self.n = n; self.c = c; self.hw = hw
    }

    /// What a kernel reads the planes from (only while computing: a dry run's tensors hold no memory).
    public var source: Kernels.BatchNormGradientSource {
        .init(dY: dY.ptr, xhat: xhat.ptr, dYScale: dYScale, c: c, hw: hw, coefficients: coefficients.ptr)
    }
}

/// One recorded op: the gradient flowing into its output, and how to pass it on to its inputs.
public final class Node {
    var grad: Tensor?
    var gradIsExclusive = false
    /// A gradient with a pending factor: the gradient is gradScale·grad, `grad` shared and only
    /// read (a weighted sum hands its own dY to each term). Only where `reads` has `.scaled`.
    var gradScale: Float?
    /// A gradient not yet written: a batch norm's input gradient (`grad` then holds the batch
    /// norm's dY, not read as the gradient). Only where `reads` has `.batchNormInput`.
    var gradSource: PendingBatchNormGradient?
    /// The channel sums of the gradient (see `GradientForms.channelSums`), handed over with a first
    /// gradient; dropped as soon as any other gradient is added. Only where `reads` has `.channelSums`.
    var gradChannelSums: Tensor?
    /// The forms of gradient the op's backward reads besides a written tensor.
    var reads: GradientForms = []
    var backwardFn: ((Tensor, BackwardContext) throws -> Void)?
    let inputs: [Node?]
    let owner: Int32
    let parameter: Parameter?
    let shape: [Int]

    init(shape: [Int], inputs: [Node?], owner: Int32, parameter: Parameter? = nil,
         backward: ((Tensor, BackwardContext) throws -> Void)?) {
        self.shape = shape
        self.inputs = inputs
        self.owner = owner
        self.parameter = parameter
        self.backwardFn = backward
    }
}

/// What a backward closure may do: ask which inputs need a gradient, and hand gradients on.
public struct BackwardContext {
    let node: Node
    let graph: Graph
    /// The factor the op's gradient dOut must be multiplied by as it is read: 1, unless the op was
    /// recorded reading `.scaled` and its consumer handed on a scaled gradient
    /// (`accumulateScaled`). A kernel computes s·dY in a register, the same float the unscaled
    /// path's scale pass stores, so results are bit-identical.
    public let outputScale: Float
    /// The op's gradient as a batch norm's pending input gradient, for an op recorded with
    /// `.batchNormInput`: its kernel makes each plane where it reads it, and dOut is not read.
    public let batchNormGradient: PendingBatchNormGradient?
    /// For an op recorded with `.channelSums` whose whole gradient came with them: 2C Doubles,
    /// Σ s·dOut per channel, then Σ s·dOut·out per channel (s = `outputScale`; each plane's Float
    /// lanes added in Double, as `Kernels.batchNormBackward`'s sums pass makes them). nil when they
    /// did not come, and in a dry run (its tensors hold no memory, and no kernel reads them).
    public let outputChannelSums: UnsafePointer<Double>?

    /// True when input `i`'s op takes the channel sums of its gradient and has no gradient yet:
    /// `accumulateScaled(_:_:scale:channelSums:)` may then hand them over.
    public func takesChannelSums(_ i: Int) -> Bool {
        guard let input = node.inputs[i] else { return false }
        return graph.handsOverChannelSums && input.reads.contains(.channelSums) && input.reads.contains(.scaled)
            && graph.takesFirstGradient(input)
    }

    /// True when input `i`'s op reads a batch norm's input gradient unwritten and has no gradient
    /// yet: `handOn(_:batchNormGradient:)` may then be used in place of writing dX.
    public func takesBatchNormGradient(_ i: Int) -> Bool {
        guard let input = node.inputs[i] else { return false }
        return input.reads.contains(.batchNormInput) && graph.takesFirstGradient(input)
    }

    /// Hands input `i` its gradient unwritten (only where `takesBatchNormGradient(i)`).
    public func handOn(_ i: Int, batchNormGradient pending: PendingBatchNormGradient) {
        guard let input = node.inputs[i] else { return }
        precondition(takesBatchNormGradient(i), "a pending batch-norm gradient for an op that does not read one, or after another gradient")
        graph.adopt(pending.dY, into: input)
        input.gradSource = pending
    }

    /// True if input `i` needs a gradient.
    public func needs(_ i: Int) -> Bool { node.inputs[i] != nil }

    /// Adds `g` into input `i`'s gradient. `g` may be kept without copying: do not write to it afterwards.
    public func accumulate(_ i: Int, _ g: Tensor) throws {
        guard let input = node.inputs[i] else { return }
        try graph.accumulate(into: input, g)
    }

    /// Adds s·g into input `i`'s gradient. Where the input's op takes a scaled gradient and has
    /// none yet, g is kept with the pending factor s (not copied; do not write to it afterwards);
    /// otherwise s·g is added in one pass.
    public func accumulateScaled(_ i: Int, _ g: Tensor, scale s: Float) throws {
        guard let input = node.inputs[i] else { return }
        try graph.accumulate(into: input, g, scale: s)
    }

    /// `accumulateScaled`, handing over the channel sums of s·g with it (2C Doubles in `sums`, see
    /// `outputChannelSums`) where input `i` takes them (`takesChannelSums`, checked here again).
    public func accumulateScaled(_ i: Int, _ g: Tensor, scale s: Float, channelSums sums: Tensor?) throws {
        guard let input = node.inputs[i] else { return }
        let hands = sums != nil && takesChannelSums(i)
        try graph.accumulate(into: input, g, scale: s)
        if hands { input.gradChannelSums = sums }
    }

    /// For a kernel that can add its result to what input `i`'s gradient holds so far: the tensor
    /// to write (`out`) and the gradient so far to add to it (`addend`: nil when there is none; it
    /// may be `out` itself, in place). The kernel writes out = addend + its result, the sum
    /// `accumulate` would make of a temporary, without the temporary and its pass. nil when input
    /// `i` needs no gradient. The gradient is input i's once this returns.
    public func accumulationTarget(_ i: Int) throws -> (out: Tensor, addend: Tensor?)? {
        guard let input = node.inputs[i] else { return nil }
        return try graph.accumulationTarget(for: input)
    }

    /// If input `i` is a parameter, its persistent gradient buffer: a kernel may add into it
    /// directly (saves a temporary). nil for non-parameters.
    public func parameterGrad(_ i: Int) throws -> Tensor? {
        guard let input = node.inputs[i], let p = input.parameter else { return nil }
        return try p.ensureGrad()
    }

    /// True when kernels must run (false in dry-run mode).
    public var computing: Bool { !graph.accountant.isDryRun }
}

/// A value in the graph: a tensor and, when gradients are recorded, its node.
public final class Variable {
    public let value: Tensor
    public let node: Node?
    public unowned let graph: Graph

    init(value: Tensor, node: Node?, graph: Graph) {
        self.value = value
        self.node = node
        self.graph = graph
    }

    public var shape: [Int] { value.shape }
    public var requiresGrad: Bool { node != nil }
}

/// The tape, the run mode (training or evaluation, gradients or not) and the accountant.
public final class Graph {
    public let accountant: MemoryAccountant
    public private(set) var isRecording = true
    /// Training mode: batch norm uses batch statistics, dropout is active.
    public var training = true
    /// Randomness for dropout and drop-path.
    public var rng: RNG
    /// FLOPs counted by kernels run through this graph (multiply-add = 2).
    public var flops: Int = 0
    /// Wall-clock time by op when set (`espalier bench --profile`); nil: nothing is timed.
    public var opProfile: OpProfile?
    var tape: [Node] = []
    /// ReLU of the same value, computed once per tape (a common subexpression): any consumers that
    /// apply ReLU to one value share one output, e.g. the ops on the edges leaving one node of a
    /// supernet. Only while recording, where the output is kept for backward anyway. The input is
    /// held weakly: the cache must not keep a value alive that nothing else needs.
    var reluCache: [ObjectIdentifier: (input: WeakVariable, output: Variable)] = [:]
    /// While non-nil, training-mode batch norm sets its running statistics to the cumulative
    /// average of the batches seen since (counted per running-mean buffer) instead of the momentum
    /// update: statistics recomputed for the current weights by whoever runs those batches.
    public var batchNormRecalibration: [ObjectIdentifier: Int]? = nil
    /// Ghost batch norm: in training mode every batch norm normalises the batch in this many
    /// contiguous slices of samples [g·N/G, (g+1)·N/G), each with its own statistics, exactly as
    /// that many ranks of a data-parallel run normalise their shares; the running statistics move
    /// by the mean of the slices' statistics (what averaging them over the ranks gives). 1 = off.
    public var batchNormGroups = 1
    /// Whether consumers hand their channel sums over with a gradient (`GradientForms.channelSums`);
    /// off, each batch norm makes its own in a pass over its output and dY, as before. On, unless
    /// ESPALIER_CHANNEL_SUMS=0 (to measure the two against each other).
    public var handsOverChannelSums = ProcessInfo.processInfo.environment["ESPALIER_CHANNEL_SUMS"] != "0"
    /// The recomputed segment being built or replayed (Recompute.swift), nil outside one.
    var segment: RecomputeSegment? = nil
    /// True while a recomputed segment's forward is replayed in backward: batch norm leaves its
    /// running statistics alone (they moved once, in the forward).
    public internal(set) var isReplaying = false
    /// Randomness outside the graph that ops may draw from (a plugin host's generator): saved
    /// before a recomputed segment's forward and set back for its replay, as `rng` is.
    public var externalRandomness: (get: () -> RNG?, set: (RNG) -> Void)? = nil
    /// When non-nil, each recomputed segment's forward adds what it measured here, by name:
    /// the bytes its forward kept that recomputation frees, and its forward FLOPs (dry runs of
    /// the recompute planner).
    public var segmentMeasures: [String: SegmentMeasure]? = nil

    public init(accountant: MemoryAccountant, seed: UInt64 = 0) {
        self.accountant = accountant
        self.rng = RNG(seed: seed)
    }

    /// True when kernels must run (false in dry-run mode).
    public var computing: Bool { !accountant.isDryRun }
    public var tapeLength: Int { tape.count }

    /// Runs `body` without recording: no nodes, nothing saved for backward.
    public func noGrad<T>(_ body: () throws -> T) rethrows -> T {
        let old = isRecording
        isRecording = false
        defer { isRecording = old }
        return try body()
    }

    /// A constant (input data): no gradient.
    public func constant(_ t: Tensor) -> Variable { Variable(value: t, node: nil, graph: self) }

    /// A parameter as a graph leaf; its gradient accumulates into `p.grad`.
    public func param(_ p: Parameter) -> Variable {
        guard isRecording, p.requiresGrad else { return Variable(value: p.value, node: nil, graph: self) }
        let node = Node(shape: p.shape, inputs: [], owner: p.value.storage.owner, parameter: p, backward: nil)
        return Variable(value: p.value, node: node, graph: self)
    }

    /// A leaf that is not a parameter but whose gradient the caller wants (`gradient(of:)`).
    public func leaf(_ t: Tensor) -> Variable {
        guard isRecording else { return constant(t) }
        return Variable(value: t, node: Node(shape: t.shape, inputs: [], owner: accountant.currentOwner, backward: nil), graph: self)
    }

    /// Records an op. `backward(dOut, ctx)` must hand a gradient to every input it can reach
    /// (`ctx.accumulate`, `accumulateScaled`, `accumulationTarget`, or `handOn` where the input takes it).
    /// `reads`: the forms of output gradient `backward` reads besides a written tensor (it then
    /// applies `ctx.outputScale` wherever it reads dOut, or reads `ctx.batchNormGradient`).
    /// `op` names it in `opProfile` (the calling method by default).
    public func record(_ output: Tensor, inputs: [Variable], reads: GradientForms = [], op: StaticString = #function,
                       backward: @escaping (Tensor, BackwardContext) throws -> Void) -> Variable {
        let profiled = opProfile.map { ($0, $0.recorded(op)) }
        guard isRecording else { return constant(output) }
        let nodes = inputs.map { $0.node }
        guard nodes.contains(where: { $0 != nil }) else { return constant(output) }
        var backward = backward
        if let (profile, key) = profiled {
            let untimed = backward
            backward = { dY, ctx in
                let start = OpProfile.now()
                defer { profile.backwardRan(key, since: start) }
                try untimed(dY, ctx)
            }
        }
        let node = Node(shape: output.shape, inputs: nodes, owner: accountant.currentOwner, backward: backward)
        node.reads = reads
        tape.append(node)
        return Variable(value: output, node: node, graph: self)
    }

    /// An op's result that no backward will read (no tape, or the output written into a sink):
    /// a constant, counted as the op `op` in `opProfile` as `record` counts a taped one.
    func untaped(_ t: Tensor, op: StaticString = #function) -> Variable {
        _ = opProfile?.recorded(op)
        return constant(t)
    }

    /// A fresh tensor for an op's output, tagged as an activation of the current owner.
    public func output(_ shape: [Int]) throws -> Tensor {
        try Tensor(shape: shape, category: .activations, accountant: accountant)
    }

    /// A fresh gradient tensor owned by `owner` (during backward).
    public func gradTensor(_ shape: [Int], zeroed: Bool = false) throws -> Tensor {
        let t = try Tensor(shape: shape, category: .activationGradients, accountant: accountant)
        if zeroed { t.fill(0) }
        return t
    }

    /// See `BackwardContext.accumulationTarget`; `accumulate` adds a finished gradient through it.
    /// A parameter's gradient and one the graph made for this node are added in place; one shared
    /// with another node is only read, the sum going to a tensor of this node's own.
    func accumulationTarget(for node: Node) throws -> (out: Tensor, addend: Tensor?) {
        node.gradChannelSums = nil   // they were of the first gradient alone
        if let p = node.parameter {
            let pg = try p.ensureGrad()
            return (pg, pg)
        }
        if node.gradScale != nil || node.gradSource != nil, let shared = node.grad {
            // A second gradient for a value holding a pending one: the pending one is written out.
            let g = try accountant.withOwnerID(node.owner) { try gradTensor(node.shape) }
            if computing {
                if let s = node.gradScale { Kernels.scale(shared.ptr, s, g.ptr, count: g.count) }
                if let pending = node.gradSource { pending.source.write(n: pending.n, into: g.ptr) }
            }
            node.grad = g
            node.gradScale = nil
            node.gradSource = nil
            node.gradIsExclusive = true
            return (g, g)
        }
        if let existing = node.grad {
            if node.gradIsExclusive { return (existing, existing) }
            let sum = try accountant.withOwnerID(node.owner) { try gradTensor(node.shape) }
            node.grad = sum
            node.gradIsExclusive = true
            return (sum, existing)
        }
        let g = try gradTensor(node.shape)
        node.grad = g
        node.gradIsExclusive = true
        return (g, nil)
    }

    /// Adds g, or s·g with a scale, into `node`'s gradient. The first gradient is kept, not copied
    /// (the op that made it may still hold it), a scaled one with its factor pending where the
    /// node's op reads `.scaled`; any other is written as addend + (s·)g in one pass (for a scale,
    /// the floats of a scale pass followed by an add).
    func accumulate(into node: Node, _ g: Tensor, scale s: Float? = nil) throws {
        precondition(g.count == node.shape.reduce(1, *), "gradient of \(g.shape) for a value of \(node.shape)")
        if s == nil || node.reads.contains(.scaled), takesFirstGradient(node) {
            adopt(g, into: node)
            node.gradScale = s
            return
        }
        let (out, addend) = try accumulationTarget(for: node)
        guard computing else { return }
        switch (addend, s) {
        case let (addend?, s?): Kernels.addScaled(addend.ptr, g.ptr, scale: s, out.ptr, count: g.count)
        case let (addend?, nil): Kernels.add(addend.ptr, g.ptr, out.ptr, count: g.count)
        case let (nil, s?): Kernels.scale(g.ptr, s, out.ptr, count: g.count)
        case (nil, nil): out.ptr.update(from: g.ptr, count: g.count)   // unreachable: a first gradient is adopted
        }
    }

    /// Whether `node` has no gradient yet that a first one would be added to.
    func takesFirstGradient(_ node: Node) -> Bool { node.parameter == nil && node.grad == nil }

    /// Keeps `g` as `node`'s gradient without copying it: shared, so nobody adds into it in place.
    func adopt(_ g: Tensor, into node: Node) {
        node.grad = g.shape == node.shape ? g : g.reshaped(node.shape)
        node.gradIsExclusive = false
    }

    /// Backpropagates from a scalar `loss` (seed gradient 1) through the tape, then clears it.
    /// Parameter gradients accumulate; call `zeroGrad` on the optimiser between steps.
    public func backward(_ loss: Variable, seed: Float = 1) throws {
        guard let root = loss.node else {
            clearTape()
            throw EspalierError.invalidArgument("backward from a value that does not depend on any parameter (was it computed under noGrad?)")
        }
        defer { clearTape() }
        let g = try accountant.withOwnerID(root.owner) { try Tensor.filled(loss.shape, value: seed, category: .activationGradients, accountant: accountant) }
        try accumulate(into: root, g)
        try runBackward()
    }

    /// Backpropagates a given output gradient (same shape as `v`).
    public func backward(_ v: Variable, gradient: Tensor) throws {
        guard let root = v.node else { clearTape(); return }
        defer { clearTape() }
        try accumulate(into: root, gradient)
        try runBackward()
    }

    func runBackward() throws {
        var i = tape.count - 1
        while i >= 0 {
            let node = tape[i]
            tape[i] = Node.released
            i -= 1
            guard let dOut = node.grad, let fn = node.backwardFn else {
                node.backwardFn = nil
                node.grad = nil
                node.gradScale = nil
                node.gradSource = nil
                node.gradChannelSums = nil
                continue
            }
            let scale = node.gradScale ?? 1, pending = node.gradSource, channelSums = node.gradChannelSums
            node.grad = nil
            node.gradScale = nil
            node.gradSource = nil
            node.gradChannelSums = nil
            node.backwardFn = nil  // frees the saved tensors once `fn` returns
            try accountant.withOwnerID(node.owner) {
                let sums = computing ? channelSums.map { UnsafePointer(UnsafeMutableRawPointer($0.ptr).assumingMemoryBound(to: Double.self)) } : nil
                try withExtendedLifetime(channelSums) {
                    try fn(dOut, BackwardContext(node: node, graph: self, outputScale: scale, batchNormGradient: pending, outputChannelSums: sums))
                }
            }
        }
    }

    /// Drops every recorded node (and what it saved) without running backward.
    public func clearTape() {
        opProfile?.endPass()
        tape.removeAll(keepingCapacity: true)
        reluCache.removeAll()
    }

    /// The gradient that reached a `leaf` after `backward`, or nil (a leaf's is always written:
    /// leaves read no pending form).
    public func gradient(of v: Variable) -> Tensor? { v.node?.grad }

    /// Gives `v` the gradient `g` as if another consumer of `v` had handed it on already: shared,
    /// so what a backward adds to it goes to a tensor of its own while `g` lives (`accumulate`).
    /// For measuring one op's backward as a cell meets it at its costliest (SearchCell's
    /// worst-case draw): an input gradient that is not the op's first.
    public func presetSharedGradient(of v: Variable, _ g: Tensor) {
        guard let node = v.node else { return }
        adopt(g, into: node)
    }
}

/// A weak reference to a variable (a cache key that must not extend its life).
final class WeakVariable {
    weak var value: Variable?
    init(_ v: Variable) { value = v }
}

extension Node {
    static let released = Node(shape: [], inputs: [], owner: 0, backward: nil)
}
