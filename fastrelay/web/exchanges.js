/*
 * exchanges.js: Massive's numeric ids of the U.S. options exchanges (the "x" of options trades,
 * "bx"/"ax" of options quotes) with their names and MICs, shipped as data so the page needs no
 * REST call to show them.
 *
 * Source: Massive's exchange reference, GET /v3/reference/exchanges?asset_class=options
 * (https://massive.com/docs/rest/options/market-operations/exchanges), which names each
 * options exchange by an id, its MIC and its OPRA participant letter. The ids follow the
 * letters: 300 + the letter's place in the alphabet (A = 300 NYSE American Options ...
 * Z = 325 Cboe BZX Options). Compiled offline from two public listings that agree on that: a
 * Massive id -> name table in public client code of Massive's options trades (300 NYSE
 * American ... 325 BZX, 318 MIAX Sapphire, 320 MEMX) and the OPRA participant letters (A NYSE
 * American, B BOX, C Cboe, D MIAX Emerald, E Cboe EDGX, H GEMX, I ISE, J MRX, M MIAX, N NYSE
 * Arca, O OPRA, P MIAX Pearl, Q Nasdaq, S MIAX Sapphire, T Nasdaq BX, U MEMX, W C2, X PHLX,
 * Z BZX); names as the venues call themselves, MICs per ISO 10383 (the listings above cannot
 * vouch for Massive's exact spelling of each name). Refresh it from the endpoint above when
 * Massive adds a venue. An id not listed here is shown as "#id".
 */
(function (root) {
  "use strict";

  const OPTION_EXCHANGES = Object.freeze({
    300: { name: "NYSE American Options", short: "NYSE American", mic: "AMXO" },
    301: { name: "BOX Options Exchange", short: "BOX", mic: "XBOX" },
    302: { name: "Cboe Options", short: "Cboe", mic: "XCBO" },
    303: { name: "MIAX Emerald", short: "MIAX Emerald", mic: "EMLD" },
    304: { name: "Cboe EDGX Options", short: "Cboe EDGX", mic: "EDGO" },
    307: { name: "Nasdaq GEMX", short: "GEMX", mic: "GMNI" },
    308: { name: "Nasdaq ISE", short: "ISE", mic: "XISX" },
    309: { name: "Nasdaq MRX", short: "MRX", mic: "MCRY" },
    312: { name: "MIAX Options", short: "MIAX", mic: "XMIO" },
    313: { name: "NYSE Arca Options", short: "NYSE Arca", mic: "ARCO" },
    314: { name: "Options Price Reporting Authority", short: "OPRA", mic: "OPRA" },
    315: { name: "MIAX Pearl", short: "MIAX Pearl", mic: "MPRL" },
    316: { name: "Nasdaq Options Market", short: "Nasdaq NOM", mic: "XNDQ" },
    318: { name: "MIAX Sapphire", short: "MIAX Sapphire", mic: "SPHR" },
    319: { name: "Nasdaq BX Options", short: "Nasdaq BX", mic: "XBXO" },
    320: { name: "MEMX Options", short: "MEMX", mic: "MXOP" },
    322: { name: "Cboe C2 Options", short: "Cboe C2", mic: "C2OX" },
    323: { name: "Nasdaq PHLX", short: "PHLX", mic: "XPHO" },
    325: { name: "Cboe BZX Options", short: "Cboe BZX", mic: "BATO" },
  });

  /** {short, name, mic} of an options exchange id; an unknown one as "#id". */
  function optionExchange(id) {
    const known = OPTION_EXCHANGES[id];
    if (known) return known;
    const text = "#" + String(id);
    return { name: "exchange " + text, short: text, mic: "" };
  }

  root.OPTION_EXCHANGES = OPTION_EXCHANGES;
  root.optionExchange = optionExchange;
})(typeof window !== "undefined" ? window : globalThis);
