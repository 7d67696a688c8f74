// Recomputation (gradient checkpointing, Chen et al. 2016): a segment of the graph whose forward
// keeps only its inputs and output, and whose backward runs its forward again before running its
// own backward. `recomputed(name, inputs:) { body }` records the body on a scratch tape, which is
// dropped (and with it every activation the body saved) as soon as the body returns; one node
// stands for the segment on the tape. In backward that node replays the body on a tape of its own
// and backpropagates through it, straight into the segment's inputs and parameters.
//
// Bit-identical to the stored path, by construction:
//   • the replay takes the same code path as the forward (the body records in both);
//   • the randomness the body draws is set back to where the forward found it (`rng`, and a host's
//     generator through `externalRandomness`);
//   • batch norm normalises with the same batch statistics (the same input) and leaves its running
//     statistics alone in the replay (`isReplaying`);
//   • gradients reach the segment's inputs and parameters in the stored path's order: the replay's
//     nodes accumulate into the inputs' own nodes, not into stand-ins summed afterwards; the ReLU
//     of an input is recorded outside the segment (shared by every consumer through `reluCache`,
//     as in the stored path, so its gradient is summed over the consumers first), and the replay
//     runs its backward where the stored path does (`replayedReLU`); a body that gives back one
//     of its inputs (an identity) is no segment.
// A dry run goes through the same allocations, so the prediction of a recomputing step is exact.
// Not here: which segments to recompute (the search and training code mark them; a planner picks).

import Foundation

/// What a recomputed segment's forward measured: the bytes its saved activations held when it
/// ended (freed by recomputing it; its output stays), and its forward FLOPs (paid again in backward).
public struct SegmentMeasure: Equatable, Sendable {
    public var droppedBytes: Int
    public var flops: Int
}

/// A segment being built (`replay` false) or replayed: its inputs, and the tape outside it.
final class RecomputeSegment {
    let inputs: Set<ObjectIdentifier>
    let replay: Bool
    var outerTape: [Node]
    /// ReLUs of inputs this segment's forward recorded on the outer tape (kept in `reluCache`),
    /// by input. The replay puts each one's node on its own tape where the forward first used
    /// it, so that it runs backward where the stored path runs it: after every consumer, before
    /// the segment's nodes that came before it (a pooling op reading the input directly).
    var hoisted: [ObjectIdentifier: (input: WeakVariable, output: Variable)] = [:]
    /// Replay: the hoisted ReLUs already put on the replay's tape.
    var placed: Set<ObjectIdentifier> = []

    init(inputs: [Variable], replay: Bool, outerTape: [Node], hoisted: [ObjectIdentifier: (input: WeakVariable, output: Variable)] = [:]) {
        self.inputs = Set(inputs.map { ObjectIdentifier($0) })
        self.replay = replay
        self.outerTape = outerTape
        self.hoisted = hoisted
    }

    /// Replay: the ReLU of x this segment hoisted, its node put on the replay's tape the first time.
    func replayedReLU(_ g: Graph, of x: Variable) -> Variable? {
        let id = ObjectIdentifier(x)
        guard replay, let share = hoisted[id], share.input.value === x else { return nil }
        if placed.insert(id).inserted, let node = share.output.node { g.tape.append(node) }
        return share.output
    }

    /// True for an input of a segment being built (its ReLU then belongs outside the segment).
    func isInput(_ x: Variable) -> Bool { !replay && x.requiresGrad && inputs.contains(ObjectIdentifier(x)) }

    /// ReLU(x) of an input x, recorded on the tape outside the segment (shared through
    /// `reluCache` as any ReLU of a value); remembered as this segment's when it made it.
    func hoistedReLU(_ g: Graph, of x: Variable) throws -> Variable {
        let scratch = g.tape
        g.tape = outerTape
        g.segment = nil
        defer {
            outerTape = g.tape
            g.tape = scratch
            g.segment = self
        }
        let id = ObjectIdentifier(x), known = g.reluCache[id] != nil
        let y = try g.relu(x)
        if !known, let made = g.reluCache[id] { hoisted[id] = made }
        return y
    }
}

extension Graph {
    /// `body()`, recomputed in backward instead of keeping what it saves: its forward keeps only
    /// `inputs` (every recorded value the body reads: their ReLUs are shared outside it) and its
    /// output. The body must compute the same thing when run again on the same inputs (ops with
    /// their own kernels say so: `ES_OP_RECOMPUTABLE`). Without recording, or inside another
    /// segment, the body simply runs. `name` labels the segment's measure (`segmentMeasures`).
    public func recomputed(_ name: String, inputs: [Variable], _ body: @escaping () throws -> Variable) throws -> Variable {
        guard isRecording, segment == nil else { return try body() }
        let rngAtStart = rng, externalAtStart = externalRandomness?.get() ?? nil
        let flopsAtStart = flops
        // Every value the body made and every node it recorded die with `build`'s locals.
        let (built, held, hoisted) = try build(inputs, body)
        let value: Tensor
        switch built {
        case .input(let v): return v             // an identity: nothing to recompute
        case .constant(let t): return constant(t)   // nothing in it needs a gradient
        case .value(let t): value = t
        }
        if segmentMeasures != nil {
            var m = segmentMeasures![name, default: SegmentMeasure(droppedBytes: 0, flops: 0)]
            m.droppedBytes += held - accountant.currentTotal
            m.flops += flops - flopsAtStart
            segmentMeasures![name] = m
        }
        let node = Node(shape: value.shape, inputs: inputs.map(\.node), owner: accountant.currentOwner) { [unowned self] dOut, _ in
            try self.replay(inputs: inputs, hoisted: hoisted, rng: rngAtStart, external: externalAtStart, dOut: dOut, body)
        }
        tape.append(node)
        return Variable(value: value, node: node, graph: self)
    }

    /// What the body gave: one of its inputs (an identity), a value needing no gradient, or a value.
    private enum Built { case input(Variable), constant(Tensor), value(Tensor) }

    /// Runs the body on a scratch tape; returns what it gave, the bytes in use with the scratch
    /// tape still alive (the caller's figure after it is gone says what it held), and the ReLUs of
    /// inputs it recorded outside.
    private func build(_ inputs: [Variable], _ body: () throws -> Variable)
        throws -> (Built, Int, [ObjectIdentifier: (input: WeakVariable, output: Variable)]) {
        let frame = RecomputeSegment(inputs: inputs, replay: false, outerTape: tape)
        let cacheAtStart = reluCache
        tape = []
        segment = frame
        defer {
            segment = nil
            tape = frame.outerTape
            // The body's own ReLU shares (of values inside it) go with its scratch tape.
            reluCache = cacheAtStart.merging(frame.hoisted) { _, new in new }
        }
        let built = try body()
        if inputs.contains(where: { $0 === built }) { return (.input(built), accountant.currentTotal, [:]) }
        let scratch = tape
        return withExtendedLifetime(scratch) {
            (built.node == nil ? .constant(built.value) : .value(built.value), accountant.currentTotal, frame.hoisted)
        }
    }

    /// The segment's backward: its forward again on a tape of its own, with the randomness it
    /// first drew, then backward through that tape from `dOut`.
    private func replay(inputs: [Variable], hoisted: [ObjectIdentifier: (input: WeakVariable, output: Variable)], rng start: RNG, external: RNG?,
                        dOut: Tensor, _ body: () throws -> Variable) throws {
        let outer = tape, cache = reluCache, rngNow = rng, externalNow = externalRandomness?.get() ?? nil
        tape = []
        segment = RecomputeSegment(inputs: inputs, replay: true, outerTape: [], hoisted: hoisted)
        defer {
            tape = outer
            reluCache = cache
            segment = nil
        }
        rng = start
        if let external { externalRandomness?.set(external) }
        isReplaying = true
        let again: Variable
        do {
            defer {
                isReplaying = false
                rng = rngNow
                if let externalNow { externalRandomness?.set(externalNow) }
            }
            again = try body()
        }
        guard let root = again.node else { return }
        try accumulate(into: root, dOut)
        try runBackward()
    }
}
