// Shapes a plugin reports (a raw op's output_shape, a declared parameter's shape), checked before
// the host allocates anything for them: the release build drops bounds and overflow checks, so an
// element count that overflows would otherwise reach the kernels as a wrong, small number.

import CEspalierSDK

enum PluginShape {
    /// The most elements one tensor of a plugin may have (8 GiB of float32).
    static let maxElements = 1 << 31

    /// Why `dims` is not a shape the host can allocate, or nil: rank 1…ESPALIER_MAX_RANK (0 when
    /// `scalarAllowed`), every dimension ≥ 1, and at most `maxElements` elements, counted with
    /// overflow-checked arithmetic.
    static func problem(_ dims: [Int], scalarAllowed: Bool = false) -> String? {
        guard dims.count <= Int(ESPALIER_MAX_RANK), scalarAllowed || !dims.isEmpty else {
            return "rank \(dims.count) (a shape has 1 to \(ESPALIER_MAX_RANK) dimensions)"
        }
        guard dims.allSatisfy({ $0 >= 1 }) else { return "a dimension below 1" }
        var count = 1
        for d in dims {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= maxElements else {
                return "more than \(maxElements) elements (its element count \(overflow ? "overflows 64 bits" : "is at least \(product)"))"
            }
            count = product
        }
        return nil
    }

    static func text(_ dims: [Int]) -> String { "(" + dims.map(String.init).joined(separator: ", ") + ")" }
}
