// genotype.json: Genotype.decode (JSON, then every structural check of problems()). A genotype
// that reads must write back (jsonText) to JSON that reads to the same genotype, and draw (dot).

import EspalierCore
import EspalierSearch
import Foundation
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGenotype(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = Data(FuzzInput.bytes(start, count))
    guard let g = FuzzInput.attempt("decode", { try Genotype.decode(data, file: "genotype.json") }) else { return 0 }
    let again: Genotype
    do { again = try Genotype.decode(Data(g.jsonText().utf8), file: "genotype.json (written back)") } catch {
        fatalError("a genotype that reads does not read back after writing: \(error)")
    }
    precondition(again == g, "the genotype changed in a round trip")
    _ = g.dot(cell: .normal)
    _ = g.dot(cell: .reduce)
    return 0
}
