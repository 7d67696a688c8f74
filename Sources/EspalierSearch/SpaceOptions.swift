// The space options: strategy parameters that the host applies, not the strategy — each changes
// the search space (or the run) before the supernet is built. This table is the one place they are
// named: `SearchConfig.withStrategySpace` applies it, `espalier plugins describe` marks the
// parameters it names, and SDK/README's section "Space options" is generated from it
// (SpaceOptionsTests fails when the two disagree; ESPALIER_UPDATE_DOCS=1 rewrites the section).
// Not here: the space's own fields (SearchSpaceDescription) and the CLI flags that set them directly.

import EspalierCore
import Foundation

/// A strategy parameter the host applies to the search space (or the run).
public struct SpaceOption: Sendable {
    /// A change to a config, made from a parameter's text.
    public typealias Change = @Sendable (inout SearchConfig) -> Void

    /// A value the option does not accept; the message names the option and what it accepts.
    public struct InvalidValue: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// The parameter's name, as a strategy declares it (`partial_channels`).
    public let name: String
    /// What it sets, by field (`space.partialChannels`).
    public let sets: String
    /// The values it accepts, as its error and the docs say them ("an integer ≥ 1").
    public let accepts: String
    /// One line on what it does.
    public let doc: String
    /// Applied after every other option, because its change reads what they set (`section_cells`).
    public let appliesLast: Bool
    /// text → the change to the config; throws `InvalidValue` for text outside `accepts`.
    public let parse: @Sendable (String) throws -> Change

    init(_ name: String, sets: String, accepts: String, doc: String, appliesLast: Bool = false,
         parse: @escaping @Sendable (_ text: String, _ fail: (String?) -> InvalidValue) throws -> Change) {
        self.name = name; self.sets = sets; self.accepts = accepts; self.doc = doc; self.appliesLast = appliesLast
        self.parse = { text in
            try parse(text) { why in
                InvalidValue(message: "\(name) must be \(accepts) (got '\(text)'\(why.map { ": \($0)" } ?? ""))")
            }
        }
    }

    /// The option a strategy parameter of this name is, or nil.
    public static func named(_ name: String) -> SpaceOption? { all.first { $0.name == name } }

    /// Every space option, in the order the docs list them.
    public static let all: [SpaceOption] = [
        SpaceOption("partial_channels", sets: "space.partialChannels", accepts: "an integer ≥ 1",
                    doc: "PC-DARTS partial channels K: each edge's ops see C/K channels, the rest bypass them (C must be divisible by K)") { text, fail in
            guard let k = Int(text), k >= 1 else { throw fail(nil) }
            return { $0.space.partialChannels = k }
        },
        SpaceOption("edge_normalization", sets: "space.edgeNormalization", accepts: boolAccepts,
                    doc: "PC-DARTS edge normalisation: a β per edge, softmax over each node's incoming edges; edges rank by op weight × β̃") { text, fail in
            let on = try bool(text, fail)
            return { $0.space.edgeNormalization = on }
        },
        SpaceOption("scale_parameter_free", sets: "space.scaleParameterFree", accepts: boolAccepts,
                    doc: "GSparsity: every candidate without parameters gets a learnable output scale (init 1, clamped to [0, 1])") { text, fail in
            let on = try bool(text, fail)
            return { $0.space.scaleParameterFree = on }
        },
        SpaceOption("affine_ops", sets: "space.affineOps", accepts: boolAccepts,
                    doc: "GSparsity: candidate ops built as the evaluation network has them (batch norm with γ/β, none after pools)") { text, fail in
            let on = try bool(text, fail)
            return { $0.space.affineOps = on }
        },
        SpaceOption("aggregator", sets: "space.aggregator", accepts: "one of \(NodeAggregator.allCases.map(\.rawValue).joined(separator: ", "))",
                    doc: "FiGS: how a node combines its candidates; concat = BN(conv1×1(concat of w·y)); sum keeps what --aggregator gave") { text, fail in
            guard let a = NodeAggregator(rawValue: text.lowercased()) else { throw fail(nil) }
            return { if a == .concat { $0.space.aggregator = .concat } }
        },
        SpaceOption("hyper_connected", sets: "space.hyperConnected", accepts: boolAccepts,
                    doc: "Bonsai-Net's relaxed space: distinct cells, each summing gated inputs from every earlier output; false keeps --hyper-connected") { text, fail in
            let on = try bool(text, fail)
            return { $0.space.hyperConnected = $0.space.hyperConnected || on }
        },
        SpaceOption("auxiliary_weight", sets: "space.auxiliaryWeight", accepts: "a number ≥ 0",
                    doc: "Bonsai-Net: weight w of the auxiliary heads' loss, loss = CE(main) + w·Σ CE(aux)") { text, fail in
            guard let w = Double(text), w >= 0, w.isFinite else { throw fail(nil) }
            return { $0.space.auxiliaryWeight = w }
        },
        SpaceOption("reduction_cells", sets: "space.reductionCells", accepts: "comma-separated cell indices ≥ 0, or empty",
                    doc: "which cells reduce; empty keeps the default (cells/3 and 2·cells/3)") { text, fail in
            let items = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !items.isEmpty else { return { _ in } }
            let cells = try items.map {
                guard let i = Int($0), i >= 0 else { throw fail("'\($0)' is not a cell index") }
                return i
            }
            return { $0.space.reductionCells = cells }
        },
        SpaceOption("section_cells", sets: "space.reductionCells", accepts: "comma-separated cell counts ending in one ≥ 1",
                    doc: "Bonsai-Net: a hyper-connected space grown in sections keeps its reductions where the last section's depth L has them (L/3, 2·L/3) unless reduction_cells says",
                    appliesLast: true) { text, fail in
            // Only the last count matters here; the strategy checks the rest.
            guard let item = text.split(separator: ",", omittingEmptySubsequences: false).last.map({ $0.trimmingCharacters(in: .whitespaces) }),
                  let last = Int(item), last >= 1 else { throw fail(nil) }
            return { c in
                if c.space.hyperConnected && c.space.reductionCells == nil && last > c.space.cells { c.space.reductionCells = [last / 3, 2 * last / 3] }
            }
        },
        SpaceOption("bn_recalibration", sets: "bnRecalibrationBatches", accepts: "a batch count ≥ 0",
                    doc: "before each evaluation, recompute batch norm's running statistics over this many training batches (0 = off); --bn-recalibration wins") { text, fail in
            guard let k = Int(text), k >= 0 else { throw fail(nil) }
            return { if $0.bnRecalibrationBatches == nil { $0.bnRecalibrationBatches = k } }
        },
    ]

    static let boolAccepts = "true or false (or 1/0, yes/no, on/off)"

    /// The words ParamSpec accepts for a bool.
    static func bool(_ text: String, _ fail: (String?) -> InvalidValue) throws -> Bool {
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw fail(nil)
        }
    }

    // MARK: The SDK/README section

    /// The markers SDK/README's generated section sits between.
    public static let readmeBegin = "<!-- space-options: generated from SpaceOption.all (Sources/EspalierSearch/SpaceOptions.swift); do not edit -->"
    public static let readmeEnd = "<!-- space-options: end -->"

    /// The section's text between the markers: one table row per option.
    public static var readmeTable: String {
        var lines = ["| parameter | sets | accepts | what it does |", "|---|---|---|---|"]
        for o in all { lines.append("| `\(o.name)` | `\(o.sets)` | \(o.accepts) | \(o.doc) |") }
        return lines.joined(separator: "\n")
    }
}
