// MathJax settings for the math that pymdownx.arithmatex marks up in generic mode: inline math
// becomes \( ... \) and display math \[ ... \], each inside an element of class "arithmatex".
// MathJax typesets those elements and skips the rest of the page, code blocks included.
// This file must load before assets/mathjax/tex-chtml.js, which reads window.MathJax at start-up.
// The site does not enable Material's instant navigation, so every page is a full load and
// MathJax typesets it on start-up.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*",
    processHtmlClass: "arithmatex",
  },
};
