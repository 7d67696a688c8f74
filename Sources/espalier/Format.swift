// Small text helpers for tables printed by the CLI.

/// Pads `s` to `width` characters (right-aligned when `left` is true).
func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let n = s.count
    if n >= width { return s + " " }
    let fill = String(repeating: " ", count: width - n)
    return left ? fill + s : s + fill
}
